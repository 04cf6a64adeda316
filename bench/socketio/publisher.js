// Publishes the bench's events into Socket.IO through Redis (@socket.io/redis-emitter):
// the Socket.IO counterpart of parley::EventPublisher in fanout_bench. Forked by
// loadgen.js and driven over IPC:
//
//   {cmd: 'round', phase}                        one event in every room
//   {cmd: 'paced', phase, rate, duration_ms}     `rate` events/s in aggregate, round-robin
//                                                over the rooms; replies {published}
//
// Each event is {s: room, q: seq in its room, p: phase, t: publish time in ns of
// CLOCK_MONOTONIC (process.hrtime, shared by every process of the machine), x: text}.
'use strict';

const { Emitter } = require('@socket.io/redis-emitter');
const { createClient } = require('redis');

const { flag } = require('./flags');

async function main() {
  const sessions = Number(flag('sessions', '1000'));
  const text = 'x'.repeat(Number(flag('text_bytes', '32')));
  const redis = createClient({ url: flag('redis', 'redis://127.0.0.1:6379') });
  redis.on('error', (err) => console.error(`publisher: redis: ${err.message}`));
  await redis.connect();
  const emitter = new Emitter(redis);
  const rooms = Array.from({ length: sessions }, (_, i) => `s${i}`);
  const seqs = new Array(sessions).fill(0);

  const emitOne = (i, phase) => {
    seqs[i] += 1;
    emitter.to(rooms[i]).emit('ev', {
      s: rooms[i], q: seqs[i], p: phase, t: Number(process.hrtime.bigint()), x: text,
    });
  };

  const paced = (phase, rate, durationMs) => new Promise((resolve) => {
    const start = process.hrtime.bigint();
    const durationNs = BigInt(Math.round(durationMs * 1e6));
    let published = 0;
    let next = 0;
    const tick = () => {
      const elapsed = process.hrtime.bigint() - start;
      const due = Math.min(Math.floor((Number(elapsed) / 1e9) * rate),
        Math.floor((durationMs / 1000) * rate));
      // Bounded per tick, so a slow Redis cannot make one tick run forever.
      for (let n = 0; published < due && n < 100000; n += 1) {
        emitOne(next, phase);
        next = (next + 1) % sessions;
        published += 1;
      }
      if (elapsed >= durationNs) {
        resolve(published);
      } else {
        setTimeout(tick, 1);
      }
    };
    tick();
  });

  process.on('message', async (msg) => {
    if (msg.cmd === 'round') {
      for (let i = 0; i < sessions; i += 1) emitOne(i, msg.phase);
      process.send({ done: msg.cmd, published: sessions });
    } else if (msg.cmd === 'paced') {
      const published = await paced(msg.phase, msg.rate, msg.duration_ms);
      process.send({ done: msg.cmd, published });
    } else if (msg.cmd === 'exit') {
      await redis.quit().catch(() => {});
      process.exit(0);
    }
  });
  process.on('disconnect', () => process.exit(0)); // loadgen is gone.
  process.send({ ready: true });
}

main().catch((err) => {
  console.error(`publisher: ${err.stack || err}`);
  process.exit(1);
});
