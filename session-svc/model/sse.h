// SseParser: Server-Sent Events parsed incrementally, as the bytes of a model's
// streamed answer arrive in arbitrary pieces.
//
// The event-stream format (WHATWG HTML, "Server-sent events"): lines end with LF, CRLF
// or CR; "field: value" lines (one optional space after the colon is dropped); "data"
// lines of one event are joined with LF; "event" names it; a blank line dispatches it;
// lines starting with ':' are comments (keep-alives). An event with no data line is not
// dispatched.
//
//   SseParser parser([&](const SseEvent& e) { return Handle(e.event, e.data); });
//   for (chunk : body) if (!parser.Feed(chunk).ok()) break;
//   if (parser.pending()) { /* the stream ended inside an event */ }
//
// Not thread-safe: one stream, one parser.
#pragma once

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace parley::session::model {

struct SseEvent {
  std::string event;  // Empty means "message".
  std::string data;
  std::string id;
};

class SseParser {
 public:
  // Returns false to stop parsing (Feed then answers CANCELLED).
  using Handler = std::function<bool(const SseEvent& event)>;
  // Lines longer than this are a malformed stream, not a reason to buffer forever.
  static constexpr size_t kMaxLineBytes = 16 << 20;

  explicit SseParser(Handler handler) : handler_(std::move(handler)) {}

  // Parses `bytes`, dispatching every event completed by them. INVALID_ARGUMENT when a
  // line exceeds kMaxLineBytes; CANCELLED when the handler returned false.
  absl::Status Feed(absl::string_view bytes);
  // True when the bytes so far end inside an event (a truncated stream).
  bool pending() const { return !line_.empty() || has_data_ || !event_.event.empty(); }

 private:
  // One complete line (without its terminator); false when the handler stopped.
  bool Line(absl::string_view line);

  Handler handler_;
  std::string line_;      // An incomplete line carried to the next Feed.
  bool skip_lf_ = false;  // The previous Feed ended with CR: a leading LF belongs to it.
  SseEvent event_;        // The event being assembled.
  bool has_data_ = false;
};

}  // namespace parley::session::model
