// Parley from Node.js, the way a backend serving many users watches many sessions: one
// Subscribe stream carries a subscription per session instead of one stream each.
//
//   eval "$(scripts/dev env)"                  # PARLEY_ADDR and PARLEY_API_KEY
//   npm ci --prefix examples/node && node examples/node/multiplex.js [SESSIONS]
//
// Creates SESSIONS sessions (default 5), sends a message to each, and follows every turn
// over one stream: each subscription starts at its turn and ends (status OK) after the
// turn is sealed. Deliveries arrive in batches; each names its subscription. A
// subscription that ends with a resumable error (UNAVAILABLE, RESOURCE_EXHAUSTED) is
// added again after its last seq, on the same stream; the others never notice. Checks
// that no session missed or repeated an event.
'use strict';

const path = require('path');
const crypto = require('crypto');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.join(__dirname, '..', '..', 'proto');
const MESSAGE = '@words 40\n@rate 400\nTell me a short story.';
const RESUMABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.RESOURCE_EXHAUSTED]);

function loadApi() {
  const definition = protoLoader.loadSync('parley/v1/parley.proto', {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: String, // uint64 seqs arrive as decimal strings: no precision is lost.
    enums: String,
    defaults: true,
    oneofs: true, // delivery.item says which of event, epoch_changed, ended is set.
  });
  return grpc.loadPackageDefinition(definition).parley.v1;
}

function call(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + 30000 }, (error, response) =>
      error ? reject(error) : resolve(response));
  });
}

async function main() {
  const addr = process.env.PARLEY_ADDR || '127.0.0.1:7070';
  const key = process.env.PARLEY_API_KEY;
  if (!key) throw new Error('set PARLEY_API_KEY (eval "$(scripts/dev env)")');
  const count = Number(process.argv[2] || 5);
  const api = loadApi();
  const sessions = new api.SessionService(addr, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${key}`);

  const watched = new Map(); // subscription id -> what we follow in it.
  for (let i = 0; i < count; i += 1) {
    const { session } = await call(sessions, 'CreateSession', { title: `multiplex ${i}` }, metadata);
    const sent = await call(sessions, 'SendMessage', {
      session_id: session.id, content: [{ text: MESSAGE }], idempotency_key: crypto.randomUUID(),
    }, metadata);
    watched.set(`s${i}`, {
      session: session.id, turn: sent.turn.id, lastSeq: null, events: 0, status: null, ended: false,
    });
  }

  const stream = sessions.Subscribe(metadata);
  const add = (id) => {
    const w = watched.get(id);
    const request = { session_id: w.session, until_turn_end: true };
    if (w.lastSeq === null) request.from_turn_id = w.turn; // The turn from its start.
    else request.after_seq = w.lastSeq.toString(); // Resuming: right after the cursor.
    stream.write({ add: { subscription_id: id, request } });
  };
  let batches = 0;
  const done = new Promise((resolve, reject) => {
    stream.on('data', (response) => {
      batches += 1;
      for (const delivery of response.deliveries) {
        const w = watched.get(delivery.subscription_id);
        if (delivery.item === 'event') {
          const seq = BigInt(delivery.event.seq);
          if (w.lastSeq !== null && seq !== w.lastSeq + 1n) {
            reject(new Error(`${w.session}: gap or repeat: expected ${w.lastSeq + 1n}, got ${seq}`));
            stream.cancel();
            return;
          }
          w.lastSeq = seq;
          w.events += 1;
          if (delivery.event.payload === 'turn_completed') w.status = delivery.event.turn_completed.status;
        } else if (delivery.item === 'ended') {
          if (RESUMABLE.has(delivery.ended.code)) {
            add(delivery.subscription_id); // Same stream, from its cursor.
            continue;
          }
          if (delivery.ended.code !== grpc.status.OK) {
            reject(new Error(`${w.session}: ${delivery.ended.code} ${delivery.ended.message}`));
            stream.cancel();
            return;
          }
          w.ended = true;
          // All done: half-close; the server ends the stream with OK.
          if ([...watched.values()].every((x) => x.ended)) stream.end();
        }
      }
    });
    stream.on('error', reject);
    stream.on('end', resolve);
  });
  for (const id of watched.keys()) add(id);
  await done;

  let failed = 0;
  for (const [id, w] of watched) {
    console.log(`${id} session ${w.session}: ${w.status}, ${w.events} events, none missing or repeated`);
    if (w.status !== 'TURN_STATUS_SUCCEEDED') failed += 1;
  }
  console.log(`${watched.size} sessions over one stream in ${batches} batches`);
  sessions.close();
  return failed ? 1 : 0;
}

main().then((code) => process.exit(code), (error) => {
  console.error('multiplex failed:', error.message || error);
  process.exit(1);
});
