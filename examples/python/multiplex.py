#!/usr/bin/python3
"""Parley from Python, the way a backend serving many users watches many sessions: one
Subscribe stream carries a subscription per session instead of one stream each.

    eval "$(scripts/dev env)"                 # PARLEY_ADDR and PARLEY_API_KEY
    /usr/bin/python3 examples/python/multiplex.py [SESSIONS]

Creates SESSIONS sessions (default 5), sends a message to each, and follows every turn
over one stream: each subscription starts at its turn and ends (status OK) after the
turn is sealed. Deliveries arrive in batches; each names its subscription. A
subscription that ends with a resumable error (UNAVAILABLE, RESOURCE_EXHAUSTED) is
added again after its last seq, on the same stream; the others never notice. Checks
that no session missed or repeated an event.
"""

import os
import queue
import sys
import uuid

from quickstart import generate_stubs, GEN  # noqa: F401  (generates the stubs on import)

sys.path.insert(0, GEN)

import grpc  # noqa: E402
from parley.v1 import parley_pb2, parley_pb2_grpc, resources_pb2  # noqa: E402

MESSAGE = "@words 40\n@rate 400\nTell me a short story."
RESUMABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
CODES = {code.value[0]: code for code in grpc.StatusCode}  # An `ended` status's number.


def main():
    addr = os.environ.get("PARLEY_ADDR", "127.0.0.1:7070")
    key = os.environ.get("PARLEY_API_KEY")
    if not key:
        sys.exit("set PARLEY_API_KEY (eval \"$(scripts/dev env)\")")
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    auth = [("authorization", "Bearer " + key)]
    sessions = parley_pb2_grpc.SessionServiceStub(grpc.insecure_channel(addr))

    # subscription id -> what we follow in it.
    watched = {}
    for i in range(count):
        session = sessions.CreateSession(
            parley_pb2.CreateSessionRequest(title="multiplex %d" % i), metadata=auth,
            timeout=30).session
        send = parley_pb2.SendMessageRequest(session_id=session.id,
                                             idempotency_key=str(uuid.uuid4()))
        send.content.add().text = MESSAGE
        turn = sessions.SendMessage(send, metadata=auth, timeout=30).turn
        watched["s%d" % i] = {"session": session.id, "turn": turn.id, "last_seq": None,
                              "events": 0, "status": None, "ended": False}

    # The client side of the stream: adds (and re-adds) go through this queue.
    requests = queue.Queue()

    def add(sub_id):
        w = watched[sub_id]
        request = parley_pb2.StreamEventsRequest(session_id=w["session"], until_turn_end=True)
        if w["last_seq"] is None:
            request.from_turn_id = w["turn"]   # The turn from its start.
        else:
            request.after_seq = w["last_seq"]  # Resuming: right after the cursor.
        requests.put(parley_pb2.SubscribeRequest(
            add=parley_pb2.AddSubscription(subscription_id=sub_id, request=request)))

    def outgoing():
        while True:
            request = requests.get()
            if request is None:
                return  # Half-close: the server ends the stream once all have ended.
            yield request

    for sub_id in watched:
        add(sub_id)
    batches = 0
    for response in sessions.Subscribe(outgoing(), metadata=auth):
        batches += 1
        for delivery in response.deliveries:
            w = watched[delivery.subscription_id]
            kind = delivery.WhichOneof("item")
            if kind == "event":
                event = delivery.event
                if w["last_seq"] is not None and event.seq != w["last_seq"] + 1:
                    sys.exit("%s: gap or repeat: expected seq %d, got %d"
                             % (w["session"], w["last_seq"] + 1, event.seq))
                w["last_seq"] = event.seq
                w["events"] += 1
                if event.WhichOneof("payload") == "turn_completed":
                    w["status"] = resources_pb2.TurnStatus.Name(event.turn_completed.status)
            elif kind == "ended":
                code = CODES.get(delivery.ended.code, grpc.StatusCode.UNKNOWN)
                if code in RESUMABLE:
                    add(delivery.subscription_id)  # Same stream, from its cursor.
                    continue
                if code != grpc.StatusCode.OK:
                    sys.exit("%s: %s %s" % (w["session"], code.name, delivery.ended.message))
                w["ended"] = True
                if all(x["ended"] for x in watched.values()):
                    requests.put(None)
    failed = 0
    for sub_id, w in sorted(watched.items()):
        print("%s session %s: %s, %d events, none missing or repeated"
              % (sub_id, w["session"], w["status"], w["events"]))
        failed += w["status"] != "TURN_STATUS_SUCCEEDED"
    print("%d sessions over one stream in %d batches" % (len(watched), batches))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
