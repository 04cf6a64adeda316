// The few pieces of protobuf's wire format that the fan-out writes by hand around item
// bytes serialized once (SharedResponse::item_bytes): varints and the head (tag and
// length) of a length-delimited field. See protobuf's encoding guide.
//
//   std::string head;
//   AppendFieldHead(head, /*field=*/1, item.size());  // then the item's bytes
//   size_t on_the_wire = FieldSize(1, item.size());
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace parley::gateway::wire {

inline size_t VarintSize(uint64_t value) {
  size_t size = 1;
  while (value >= 0x80) {
    value >>= 7;
    ++size;
  }
  return size;
}

inline void AppendVarint(std::string& out, uint64_t value) {
  while (value >= 0x80) {
    out.push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

inline constexpr uint32_t kLengthDelimited = 2;

// The tag and length of a length-delimited field `field` holding `size` bytes.
inline void AppendFieldHead(std::string& out, uint32_t field, size_t size) {
  AppendVarint(out, (field << 3) | kLengthDelimited);
  AppendVarint(out, size);
}

// The bytes such a field takes on the wire, head included.
inline size_t FieldSize(uint32_t field, size_t size) {
  return VarintSize((field << 3) | kLengthDelimited) + VarintSize(size) + size;
}

}  // namespace parley::gateway::wire
