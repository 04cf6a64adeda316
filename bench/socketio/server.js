// The Socket.IO side of scripts/bench fanout: one Socket.IO server with the Redis
// adapter, the way a team would build "publish to Redis, fan out to subscribers".
//
//   node server.js --port=3000 --redis=redis://127.0.0.1:6379
//
// A client names its session in the handshake (query `room`) and joins that room; a
// client multiplexing many sessions over one socket sends `join` with their rooms.
// Events reach the server only through Redis: publisher.js emits with
// @socket.io/redis-emitter, which PUBLISHes to the adapter's channel; the adapter
// (subscribed to the namespace's channels) broadcasts each message to the room's
// local sockets. WebSocket transport only, no compression: the cheapest Socket.IO
// configuration. Prints "listening <port>" once it accepts connections.
'use strict';

const http = require('node:http');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');

const { flag } = require('./flags');

async function main() {
  const port = Number(flag('port', '3000'));
  const redisUrl = flag('redis', 'redis://127.0.0.1:6379');
  const pubClient = createClient({ url: redisUrl });
  const subClient = pubClient.duplicate();
  for (const client of [pubClient, subClient]) {
    client.on('error', (err) => console.error(`server: redis: ${err.message}`));
  }
  await Promise.all([pubClient.connect(), subClient.connect()]);

  const httpServer = http.createServer();
  httpServer.maxConnections = 1 << 20;
  const io = new Server(httpServer, {
    transports: ['websocket'],
    perMessageDeflate: false,
    httpCompression: false,
    serveClient: false,
    pingInterval: 25000,
    pingTimeout: 60000,
    adapter: createAdapter(pubClient, subClient),
  });
  io.on('connection', (socket) => {
    const room = socket.handshake.query.room;
    if (typeof room === 'string' && room.length > 0) socket.join(room);
    // A client multiplexing many subscriptions over one socket joins all their rooms.
    socket.on('join', (rooms, ack) => {
      if (Array.isArray(rooms)) socket.join(rooms.filter((r) => typeof r === 'string'));
      if (typeof ack === 'function') ack();
    });
  });

  const shutdown = () => {
    io.close();
    Promise.allSettled([pubClient.quit(), subClient.quit()]).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);

  httpServer.listen(port, '127.0.0.1', () => console.log(`listening ${port}`));
}

main().catch((err) => {
  console.error(`server: ${err.stack || err}`);
  process.exit(1);
});
