// The parser scans each Feed for line terminators and handles complete lines straight
// from the caller's bytes; only a line split across Feeds is copied (into line_).
#include "session-svc/model/sse.h"

#include <cstring>

namespace parley::session::model {

bool SseParser::Line(absl::string_view line) {
  if (line.empty()) {
    if (has_data_) {
      const bool go_on = handler_(event_);
      event_.data.clear();
      event_.event.clear();
      has_data_ = false;
      if (!go_on) return false;
    }
    event_.event.clear();
    return true;
  }
  if (line[0] == ':') return true;  // A comment (keep-alive).
  const size_t colon = line.find(':');
  absl::string_view field = line.substr(0, colon);
  absl::string_view value;
  if (colon != absl::string_view::npos) {
    value = line.substr(colon + 1);
    if (!value.empty() && value[0] == ' ') value.remove_prefix(1);
  }
  if (field == "data") {
    if (has_data_) event_.data.push_back('\n');
    event_.data.append(value.data(), value.size());
    has_data_ = true;
  } else if (field == "event") {
    event_.event.assign(value.data(), value.size());
  } else if (field == "id") {
    event_.id.assign(value.data(), value.size());
  }  // "retry" and unknown fields: nothing to do for a one-shot stream.
  return true;
}

absl::Status SseParser::Feed(absl::string_view bytes) {
  if (skip_lf_ && !bytes.empty()) {
    if (bytes[0] == '\n') bytes.remove_prefix(1);
    skip_lf_ = false;
  }
  while (!bytes.empty()) {
    // The next terminator: the first CR or LF.
    const char* data = bytes.data();
    const char* lf = static_cast<const char*>(std::memchr(data, '\n', bytes.size()));
    const size_t lf_at = lf == nullptr ? bytes.size() : static_cast<size_t>(lf - data);
    const char* cr = static_cast<const char*>(std::memchr(data, '\r', lf_at));
    const size_t end = cr == nullptr ? lf_at : static_cast<size_t>(cr - data);
    if (end == bytes.size()) {  // No terminator: carry the partial line.
      if (line_.size() + bytes.size() > kMaxLineBytes) {
        return absl::InvalidArgumentError("malformed event stream: a line is too long");
      }
      line_.append(bytes.data(), bytes.size());
      return absl::OkStatus();
    }
    bool go_on;
    if (line_.empty()) {
      go_on = Line(bytes.substr(0, end));
    } else {
      line_.append(data, end);
      go_on = Line(line_);
      line_.clear();
    }
    if (!go_on) return absl::CancelledError("the event handler stopped the stream");
    size_t next = end + 1;
    if (data[end] == '\r') {
      if (next < bytes.size()) {
        if (data[next] == '\n') ++next;
      } else {
        skip_lf_ = true;
      }
    }
    bytes.remove_prefix(next);
  }
  return absl::OkStatus();
}

}  // namespace parley::session::model
