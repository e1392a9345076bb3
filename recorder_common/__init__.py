"""What the sidecar and its clients share, with no dependency on either.

`defaults` says where the sidecar lives when nobody says otherwise; `varint` is
the protobuf varint both frame raw bytes with. The server imports these and
never the client library (recorder_client), which imports them too.
"""
