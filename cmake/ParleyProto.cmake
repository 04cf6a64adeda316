# parley_proto_library(NAME [ROOT dir] PROTOS a.proto b.proto ...)
#
# Generates C++ message and gRPC service code for the given .proto files (paths relative
# to ROOT, by default proto/) into the build tree and wraps it in a static library. Generated code never
# lands in the source tree.
set(PARLEY_PROTO_ROOT "${CMAKE_SOURCE_DIR}/proto")
set(PARLEY_PROTO_GEN "${CMAKE_BINARY_DIR}/gen")
get_target_property(PARLEY_GRPC_CPP_PLUGIN gRPC::grpc_cpp_plugin LOCATION)

function(parley_proto_library name)
  cmake_parse_arguments(ARG "" "ROOT" "PROTOS" ${ARGN})
  if(NOT ARG_ROOT)
    set(ARG_ROOT "${PARLEY_PROTO_ROOT}")
  endif()
  set(srcs)
  foreach(proto IN LISTS ARG_PROTOS)
    string(REGEX REPLACE "\\.proto$" "" stem "${proto}")
    set(outs
      "${PARLEY_PROTO_GEN}/${stem}.pb.cc" "${PARLEY_PROTO_GEN}/${stem}.pb.h"
      "${PARLEY_PROTO_GEN}/${stem}.grpc.pb.cc" "${PARLEY_PROTO_GEN}/${stem}.grpc.pb.h")
    add_custom_command(
      OUTPUT ${outs}
      COMMAND ${CMAKE_COMMAND} -E make_directory "${PARLEY_PROTO_GEN}"
      COMMAND protobuf::protoc
        -I "${ARG_ROOT}" -I "${PARLEY_PROTO_ROOT}" -I /usr/include
        --cpp_out "${PARLEY_PROTO_GEN}"
        --grpc_out "${PARLEY_PROTO_GEN}"
        --plugin=protoc-gen-grpc=${PARLEY_GRPC_CPP_PLUGIN}
        "${ARG_ROOT}/${proto}"
      DEPENDS "${ARG_ROOT}/${proto}" protobuf::protoc
      COMMENT "protoc ${proto}"
      VERBATIM)
    list(APPEND srcs ${outs})
  endforeach()
  add_library(${name} STATIC ${srcs})
  target_include_directories(${name} SYSTEM PUBLIC "${PARLEY_PROTO_GEN}")
  target_link_libraries(${name} PUBLIC protobuf::libprotobuf gRPC::grpc++)
  # Generated code is not ours to warn about.
  target_compile_options(${name} PRIVATE -w)
endfunction()
