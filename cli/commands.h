// The `parley` commands. Each takes the words after its own name and returns the
// process's exit status (cli/cli.h).
#pragma once

#include "cli/cli.h"

namespace parley::cli {

// sessions create|list|get|update|close
int SessionsCommand(const Invocation& call);
// send SESSION TEXT [--follow] [--policy P] [--idempotency_key K]
int SendCommand(const Invocation& call);
// watch SESSION [--after N | --from-latest | --from_turn T] [--until_turn_end]
int WatchCommand(const Invocation& call);
// turns list|get|cancel
int TurnsCommand(const Invocation& call);
// messages SESSION [--limit N] [--latest]
int MessagesCommand(const Invocation& call);
// keys create|list|revoke (the caller's tenant)
int KeysCommand(const Invocation& call);
// exec SESSION [--cwd D] [--process_timeout T] -- CMD [ARG...]
// (exits with the command's own status)
int ExecCommand(const Invocation& call);
// files put SESSION LOCAL REMOTE | get SESSION REMOTE [LOCAL] | ls SESSION [PATH]
int FilesCommand(const Invocation& call);
// admin tenants create|list|get|disable|enable; admin keys create|list|revoke --tenant T
int AdminCommand(const Invocation& call);

}  // namespace parley::cli
