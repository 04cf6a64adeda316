// Following a session's event stream: printing events as they arrive and resuming
// after a dropped connection from the last seq received.
//
// Human output streams the assistant's text as it arrives and puts tool calls, their
// output, retries and the turn's end on lines of their own; --json prints every
// StreamEventsResponse (keepalives included) as one JSON line.
#pragma once

#include <optional>
#include <vector>

#include "cli/cli.h"

namespace parley::cli {

// Streams `request` until the server ends the stream, resuming (with after_seq and
// epoch of the last event received) when the connection drops or the gateway shuts
// down: at most 5 attempts in a row that deliver nothing. Returns the exit status:
// with until_turn_end, 0 only when the turn succeeded (1 when it failed or was
// cancelled); otherwise 0 when the stream ended normally.
int FollowEvents(Connection& connection, v1::StreamEventsRequest request);

// Streams several sessions over one Subscribe stream, one subscription per request,
// each line of human output prefixed with its session. A subscription that ends
// resumably (UNAVAILABLE, RESOURCE_EXHAUSTED) is added again from its cursor; a dropped
// stream is reopened with every open subscription from its own cursor (at most 5
// attempts in a row that deliver nothing). Returns when every subscription has ended:
// 0 when all ended normally (with until_turn_end, when every turn succeeded), else the
// exit status of the worst end.
int FollowMany(Connection& connection, const std::vector<v1::StreamEventsRequest>& requests);

}  // namespace parley::cli
