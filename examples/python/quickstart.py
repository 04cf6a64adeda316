#!/usr/bin/python3
"""Parley from Python: create a session, send a message, stream the turn, and resume
the stream after a dropped connection from the last seq received.

    eval "$(scripts/dev env)"                 # PARLEY_ADDR and PARLEY_API_KEY
    /usr/bin/python3 examples/python/quickstart.py

Needs Debian's python3-grpcio and python3-protobuf (scripts/setup installs them), and
protoc with grpc_python_plugin (protobuf-compiler-grpc): the stubs are generated from
proto/ into examples/python/.gen on first run; nothing generated is committed.
"""

import os
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "..", "proto")
# Where the stubs go: PARLEY_PY_GEN_DIR, else .gen beside this file.
GEN = os.environ.get("PARLEY_PY_GEN_DIR") or os.path.join(HERE, ".gen")


def generate_stubs():
    """Generates the parley.v1 Python modules when proto/ is newer than them."""
    sources = [os.path.join("parley", "v1", name)
               for name in ("parley.proto", "resources.proto", "events.proto", "errors.proto")]
    newest = max(os.path.getmtime(os.path.join(PROTO_ROOT, s)) for s in sources)
    marker = os.path.join(GEN, "parley", "v1", "parley_pb2_grpc.py")
    if os.path.exists(marker) and os.path.getmtime(marker) >= newest:
        return
    os.makedirs(GEN, exist_ok=True)
    subprocess.run(["protoc", "-I", PROTO_ROOT, "--python_out=" + GEN, "--grpc_out=" + GEN,
                    "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin", *sources],
                   check=True)


generate_stubs()
sys.path.insert(0, GEN)

import grpc  # noqa: E402
from parley.v1 import parley_pb2, parley_pb2_grpc, resources_pb2  # noqa: E402

# The message asks the built-in scripted model for 80 words at 400 words per second, so
# the turn streams for a moment; a real model would just answer it.
MESSAGE = "@words 80\n@rate 400\nTell me a story."
# After this many events the example drops its connection on purpose.
DROP_AFTER = 10
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL}


def main():
    addr = os.environ.get("PARLEY_ADDR", "127.0.0.1:7070")
    key = os.environ.get("PARLEY_API_KEY")
    if not key:
        sys.exit("set PARLEY_API_KEY (eval \"$(scripts/dev env)\")")
    auth = [("authorization", "Bearer " + key)]
    sessions = parley_pb2_grpc.SessionServiceStub(grpc.insecure_channel(addr))

    session = sessions.CreateSession(
        parley_pb2.CreateSessionRequest(title="python quickstart"), metadata=auth,
        timeout=30).session
    print("session", session.id)

    # The idempotency key makes the send safe to retry: a second call with it returns the
    # first result instead of sending the message twice.
    send = parley_pb2.SendMessageRequest(session_id=session.id,
                                         idempotency_key=str(uuid.uuid4()))
    send.content.add().text = MESSAGE
    sent = sessions.SendMessage(send, metadata=auth, timeout=30)
    turn_id = sent.turn.id
    print("turn", turn_id)

    last_seq = None  # The cursor: the seq of the last event received.
    connections = 0
    status = None
    while True:
        connections += 1
        request = parley_pb2.StreamEventsRequest(session_id=session.id, until_turn_end=True)
        if last_seq is None:
            request.from_turn_id = turn_id  # First connection: the turn from its start.
        else:
            request.after_seq = last_seq    # Every later one: right after the cursor.
        call = sessions.StreamEvents(request, metadata=auth)
        received_here = 0
        try:
            for response in call:
                if not response.HasField("event"):
                    continue  # A keepalive (it carries the cursor too) or an epoch change.
                event = response.event
                if last_seq is not None and event.seq != last_seq + 1:
                    sys.exit("gap or repeat: expected seq %d, got %d" % (last_seq + 1, event.seq))
                last_seq = event.seq
                received_here += 1
                kind = event.WhichOneof("payload")
                if kind == "text_delta":
                    print(event.text_delta.text, end="", flush=True)
                elif kind == "turn_completed":
                    status = resources_pb2.TurnStatus.Name(event.turn_completed.status)
                if connections == 1 and received_here == DROP_AFTER:
                    print("\n[dropping the connection after seq %d]" % last_seq, flush=True)
                    call.cancel()
            break  # The stream ended OK: the turn is sealed.
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.CANCELLED and connections == 1:
                print("[resuming after seq %d]" % last_seq, flush=True)
                continue
            if error.code() in RETRYABLE and connections < 10:
                time.sleep(min(0.1 * 2 ** connections, 2))
                continue
            sys.exit("stream failed: %s %s" % (error.code().name, error.details()))
    print("\nturn %s: %s; events up to seq %d over %d connections, none missing or repeated"
          % (turn_id, status, last_seq or 0, connections))
    return 0 if status == "TURN_STATUS_SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
