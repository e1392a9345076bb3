// Command recordloop records one agent loop with a tool call into an agent-recorder
// sidecar over the Record stream, reads the session back with GetSession, prints a
// JSON summary and exits 0 only when what was stored is what was sent.
//
//	./generate.sh && go run . unix:///path/to/recorder.sock --session demo-1
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	pb "agentrecorder.example/recordloop/gen/agentrecorderv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	agentID  = "go-example"
	model    = "claude-sonnet-4"
	provider = "anthropic"
)

var epoch = time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)

func at(ms int) *timestamppb.Timestamp {
	return timestamppb.New(epoch.Add(time.Duration(ms) * time.Millisecond))
}

func text(s string) *pb.ContentBlock {
	return &pb.ContentBlock{Block: &pb.ContentBlock_Text{Text: &pb.TextContent{Text: s}}}
}

func usage(input, output uint64) *pb.Usage {
	return &pb.Usage{Input: input, Output: output, TotalTokens: input + output}
}

func assistant(ms int, stop pb.StopReason, u *pb.Usage, content ...*pb.ContentBlock) *pb.AgentMessage {
	return &pb.AgentMessage{
		Role: pb.MessageRole_MESSAGE_ROLE_ASSISTANT, Content: content, Timestamp: at(ms),
		Model: model, Provider: provider, Usage: u, StopReason: stop,
	}
}

// loopEvents is a loop of two turns: the model reads a file with a tool, then answers.
func loopEvents(sessionID, loopID string) ([]*pb.AgentEvent, error) {
	args, err := structpb.NewValue(map[string]any{"path": "README.md", "max_lines": 20})
	if err != nil {
		return nil, err
	}
	question := &pb.AgentMessage{
		Role: pb.MessageRole_MESSAGE_ROLE_USER, Content: []*pb.ContentBlock{text("What does the README say?")}, Timestamp: at(1),
	}
	call := &pb.ContentBlock{Block: &pb.ContentBlock_ToolCall{ToolCall: &pb.ToolCallContent{
		Id: "call-read-1", Name: "read_file", Arguments: args,
	}}}
	reading := assistant(3, pb.StopReason_STOP_REASON_TOOL_USE, usage(120, 15), text("Reading it."), call)
	result := &pb.AgentMessage{
		Role: pb.MessageRole_MESSAGE_ROLE_TOOL_RESULT, ToolCallId: "call-read-1", ToolName: "read_file",
		Content: []*pb.ContentBlock{text("# agent-recorder ...")}, Timestamp: at(4),
	}
	answer := assistant(6, pb.StopReason_STOP_REASON_STOP, usage(180, 25), text("It describes a recording sidecar."))
	return []*pb.AgentEvent{
		{Event: &pb.AgentEvent_AgentStart{AgentStart: &pb.AgentStart{
			AgentId: agentID, SessionId: sessionID, LoopId: loopID, Timestamp: at(0),
			ContinuationKind: &pb.ContinuationKind{Kind: &pb.ContinuationKind_Initial{Initial: &pb.InitialContinuation{}}},
			ConfigSnapshot:   &pb.LoopConfigSnapshot{Model: model, Provider: provider},
		}}},
		turnStart(loopID, 0, pb.TurnTrigger_TURN_TRIGGER_USER, 1),
		messageEnd(loopID, question),
		messageEnd(loopID, reading),
		{Event: &pb.AgentEvent_ToolExecutionStart{ToolExecutionStart: &pb.ToolExecutionStart{
			LoopId: loopID, ToolCallId: "call-read-1", ToolName: "read_file", Args: args,
		}}},
		{Event: &pb.AgentEvent_ToolExecutionEnd{ToolExecutionEnd: &pb.ToolExecutionEnd{
			LoopId: loopID, ToolCallId: "call-read-1", ToolName: "read_file",
			Result: &pb.ToolResult{Content: []*pb.ContentBlock{text("# agent-recorder ...")}},
		}}},
		messageEnd(loopID, result),
		turnEnd(loopID, reading, usage(120, 15), 5, result),
		turnStart(loopID, 1, pb.TurnTrigger_TURN_TRIGGER_CONTINUATION, 5),
		messageEnd(loopID, answer),
		turnEnd(loopID, answer, usage(180, 25), 7),
		{Event: &pb.AgentEvent_AgentEnd{AgentEnd: &pb.AgentEnd{
			LoopId: loopID, Messages: []*pb.AgentMessage{question, reading, result, answer},
			Usage: usage(300, 40), Timestamp: at(8),
		}}},
	}, nil
}

func turnStart(loopID string, index uint32, trigger pb.TurnTrigger, ms int) *pb.AgentEvent {
	return &pb.AgentEvent{Event: &pb.AgentEvent_TurnStart{TurnStart: &pb.TurnStart{
		LoopId: loopID, TurnIndex: index, Timestamp: at(ms), TriggeredBy: trigger,
	}}}
}

func messageEnd(loopID string, message *pb.AgentMessage) *pb.AgentEvent {
	return &pb.AgentEvent{Event: &pb.AgentEvent_MessageEnd{MessageEnd: &pb.MessageEnd{LoopId: loopID, Message: message}}}
}

func turnEnd(loopID string, message *pb.AgentMessage, u *pb.Usage, ms int, results ...*pb.AgentMessage) *pb.AgentEvent {
	return &pb.AgentEvent{Event: &pb.AgentEvent_TurnEnd{TurnEnd: &pb.TurnEnd{
		LoopId: loopID, Message: message, Usage: u, Timestamp: at(ms), ToolResults: results,
	}}}
}

// record sends the events as one numbered batch on a Record stream and waits for
// the acknowledgement, which the server sends only once the batch is committed.
func record(ctx context.Context, client pb.RecorderServiceClient, events []*pb.AgentEvent) error {
	stream, err := client.Record(ctx)
	if err != nil {
		return err
	}
	hello := &pb.RecordRequest{Kind: &pb.RecordRequest_Hello{Hello: &pb.RecordHello{WriterId: agentID}}}
	if err := stream.Send(hello); err != nil {
		return err
	}
	if first, err := stream.Recv(); err != nil || first.GetReady() == nil {
		return fmt.Errorf("no RecordReady: %v", err)
	}
	envelopes := make([]*pb.EventEnvelope, len(events))
	for i, e := range events {
		envelopes[i] = &pb.EventEnvelope{Sequence: proto.Uint64(uint64(i)), Event: e}
	}
	batch := &pb.RecordRequest{Kind: &pb.RecordRequest_Batch{Batch: &pb.EventBatch{BatchId: 1, Events: envelopes}}}
	if err := stream.Send(batch); err != nil {
		return err
	}
	ack, err := stream.Recv()
	if err != nil {
		return err
	}
	if r := ack.GetRejection(); r != nil {
		return fmt.Errorf("batch rejected: code %d %s: %s", r.Code, r.Reason, r.Message)
	}
	if ack.BatchId != 1 || len(ack.Sequences) != len(events) {
		return fmt.Errorf("unexpected acknowledgement %v", ack)
	}
	return stream.CloseSend()
}

type summary struct {
	SessionID string `json:"session_id"`
	AgentID   string `json:"agent_id"`
	LoopID    string `json:"loop_id"`
	Status    string `json:"status"`
	Turns     int    `json:"turns"`
	Events    int    `json:"events"`
	ToolCalls int    `json:"tool_calls"`
	Matches   bool   `json:"matches"`
}

func run() error {
	sessionID := flag.String("session", "go-session-1", "session id to record")
	flag.Parse()
	if flag.NArg() != 1 {
		return fmt.Errorf("usage: recordloop TARGET [--session ID] (TARGET: unix:///path or host:port)")
	}
	loopID := *sessionID + ".default.0"
	conn, err := grpc.NewClient(flag.Arg(0), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := pb.NewRecorderServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	events, err := loopEvents(*sessionID, loopID)
	if err != nil {
		return err
	}
	if err := record(ctx, client, events); err != nil {
		return err
	}
	got, err := client.GetSession(ctx, &pb.GetSessionRequest{SessionId: *sessionID})
	if err != nil {
		return err
	}
	loop := got.GetSession().GetLoops()[0]
	matches := len(loop.Events) == len(events)
	for i, stored := range loop.Events {
		matches = matches && stored.Sequence == uint64(i) && proto.Equal(stored.Event, events[i])
	}
	tools := 0
	for _, turn := range loop.Turns {
		tools += len(turn.ToolResults)
	}
	out := summary{
		SessionID: got.Session.SessionId, AgentID: got.Session.AgentId, LoopID: loop.LoopId,
		Status: loop.Status.String(), Turns: len(loop.Turns), Events: len(loop.Events),
		ToolCalls: tools, Matches: matches,
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return err
	}
	if !matches {
		return fmt.Errorf("the stored events differ from the ones sent")
	}
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "recordloop:", err)
		os.Exit(1)
	}
}
