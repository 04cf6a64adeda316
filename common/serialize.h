// Protobuf bytes that are the same for equal messages (map entries in a fixed order):
// for fingerprints and content comparisons, never for the wire.
//
//   if (SerializeDeterministic(a) == SerializeDeterministic(b)) ...
#pragma once

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/message.h>

#include <string>

namespace parley {

inline std::string SerializeDeterministic(const google::protobuf::Message& message) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream stream(&out);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    message.SerializeToCodedStream(&coded);
  }  // The coded stream flushes into `out` when it goes.
  return out;
}

}  // namespace parley
