#!/bin/sh
# Generates the Go stubs (gen/agentrecorderv1) from the repository's protos/ with
# protoc-gen-go and protoc-gen-go-grpc installed by `go install` into ./.bin: no
# remote buf plugins, nothing from outside the Go module proxy. protoc is the one
# grpcio-tools ships in the repository's .venv (`make setup`); set PROTOC to use
# another (e.g. Debian's protobuf-compiler: PROTOC=protoc).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
module=agentrecorder.example/recordloop
package=$module/gen/agentrecorderv1

export GOBIN="$here/.bin"
go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1

# The protos carry no go_package option: map each file to the package here.
go_opts="--go_opt=module=$module"
grpc_opts="--go-grpc_opt=module=$module"
for name in types events session recorder_service; do
  go_opts="$go_opts --go_opt=Magent_recorder/v1/$name.proto=$package"
  grpc_opts="$grpc_opts --go-grpc_opt=Magent_recorder/v1/$name.proto=$package"
done

rm -rf "$here/gen"
PATH="$GOBIN:$PATH" ${PROTOC:-"$root/.venv/bin/python" -m grpc_tools.protoc} \
  -I"$root/protos" \
  --go_out="$here" $go_opts \
  --go-grpc_out="$here" $grpc_opts \
  "$root"/protos/agent_recorder/v1/*.proto
