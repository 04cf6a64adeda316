// `--name=value` command-line flags, shared by the Socket.IO bench scripts.
'use strict';

function flag(name, fallback) {
  const prefix = `--${name}=`;
  const arg = process.argv.find((a) => a.startsWith(prefix));
  return arg ? arg.slice(prefix.length) : fallback;
}

module.exports = { flag };
