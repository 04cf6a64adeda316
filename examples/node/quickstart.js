// Parley from Node.js: create a session, send a message, stream the turn, and resume
// the stream after a dropped connection from the last seq received.
//
//   eval "$(scripts/dev env)"                  # PARLEY_ADDR and PARLEY_API_KEY
//   npm ci --prefix examples/node && node examples/node/quickstart.js
//
// @grpc/proto-loader reads proto/ at run time: nothing is generated or committed.
'use strict';

const path = require('path');
const crypto = require('crypto');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.join(__dirname, '..', '..', 'proto');
// The message asks the built-in scripted model for 80 words at 400 words per second, so
// the turn streams for a moment; a real model would just answer it.
const MESSAGE = '@words 80\n@rate 400\nTell me a story.';
// After this many events the example drops its connection on purpose.
const DROP_AFTER = 10;
const RETRYABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.DEADLINE_EXCEEDED, grpc.status.INTERNAL]);

function loadApi() {
  const definition = protoLoader.loadSync('parley/v1/parley.proto', {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // Field names as in the .proto: session_id, after_seq.
    longs: String, // uint64 seqs arrive as decimal strings: no precision is lost.
    enums: String,
    defaults: true,
    oneofs: true, // Each oneof's name says which field is set (event.payload).
  });
  return grpc.loadPackageDefinition(definition).parley.v1;
}

// A unary call as a promise.
function call(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + 30000 }, (error, response) =>
      error ? reject(error) : resolve(response));
  });
}

// One StreamEvents connection: resolves when the stream ends OK, rejects with the
// gRPC error otherwise. `onEvent` sees each event; returning false drops the connection.
function streamOnce(client, request, metadata, onEvent) {
  return new Promise((resolve, reject) => {
    const stream = client.StreamEvents(request, metadata);
    let failure = null;
    stream.on('data', (response) => {
      if (response.item !== 'event' || failure) return; // A keepalive or an epoch change.
      let keep;
      try {
        keep = onEvent(response.event);
      } catch (error) {
        failure = error;
        keep = false;
      }
      if (keep === false) stream.cancel();
    });
    stream.on('error', (error) => reject(failure || error));
    stream.on('end', resolve);
  });
}

async function main() {
  const addr = process.env.PARLEY_ADDR || '127.0.0.1:7070';
  const key = process.env.PARLEY_API_KEY;
  if (!key) throw new Error('set PARLEY_API_KEY (eval "$(scripts/dev env)")');
  const api = loadApi();
  const sessions = new api.SessionService(addr, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${key}`);

  const { session } = await call(sessions, 'CreateSession', { title: 'node quickstart' }, metadata);
  console.log('session', session.id);
  // The idempotency key makes the send safe to retry: a second call with it returns the
  // first result instead of sending the message twice.
  const sent = await call(sessions, 'SendMessage', {
    session_id: session.id,
    content: [{ text: MESSAGE }],
    idempotency_key: crypto.randomUUID(),
  }, metadata);
  const turnId = sent.turn.id;
  console.log('turn', turnId);

  let lastSeq = null; // The cursor: the seq of the last event received (a BigInt).
  let status = null;
  let connections = 0;
  for (;;) {
    connections += 1;
    const request = { session_id: session.id, until_turn_end: true };
    if (lastSeq === null) request.from_turn_id = turnId; // The turn from its start.
    else request.after_seq = lastSeq.toString(); // Right after the cursor.
    let receivedHere = 0;
    try {
      await streamOnce(sessions, request, metadata, (event) => {
        const seq = BigInt(event.seq);
        if (lastSeq !== null && seq !== lastSeq + 1n) {
          throw new Error(`gap or repeat: expected seq ${lastSeq + 1n}, got ${seq}`);
        }
        lastSeq = seq;
        receivedHere += 1;
        if (event.payload === 'text_delta') process.stdout.write(event.text_delta.text);
        if (event.payload === 'turn_completed') status = event.turn_completed.status;
        if (connections === 1 && receivedHere === DROP_AFTER) {
          console.log(`\n[dropping the connection after seq ${lastSeq}]`);
          return false;
        }
        return true;
      });
      break; // The stream ended OK: the turn is sealed.
    } catch (error) {
      if (error.code === grpc.status.CANCELLED && connections === 1) {
        console.log(`[resuming after seq ${lastSeq}]`);
        continue;
      }
      if (RETRYABLE.has(error.code) && connections < 10) {
        await new Promise((r) => setTimeout(r, Math.min(100 * 2 ** connections, 2000)));
        continue;
      }
      throw error;
    }
  }
  console.log(`\nturn ${turnId}: ${status}; events up to seq ${lastSeq} over ${connections} ` +
    'connections, none missing or repeated');
  sessions.close();
  return status === 'TURN_STATUS_SUCCEEDED' ? 0 : 1;
}

main().then((code) => process.exit(code), (error) => {
  console.error('quickstart failed:', error.message || error);
  process.exit(1);
});
