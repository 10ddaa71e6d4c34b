// The control protocol between `udm <verb>` and `udm daemon`: one JSON object
// per line over a Unix socket, one request and one reply per connection.
//
//   request:  {"verb": "create", "name": "x", "table": "0 8 zero", "read_only": false}
//   reply:    {"ok": true, "result": ...}  or  {"ok": false, "errno": 22, "error": "..."}
//
// handle_request() is a pure function of the registry and the request (no
// sockets), so the fuzzer and the unit tests drive it directly. Every field is
// checked for presence and type; bad requests get a clear error.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "daemon/registry.h"

namespace udm {

constexpr size_t kMaxControlRequest = 1 << 20;  // 1 MiB: a huge table still fits

nlohmann::json handle_request(DeviceRegistry& reg, const nlohmann::json& req);
// Parse one request line and handle it; never throws.
std::string handle_request_line(DeviceRegistry& reg, std::string_view line);

nlohmann::json error_reply(const Status& s);
nlohmann::json device_info_json(const MappedDevice& d);

}  // namespace udm
