#include "util/status.h"

#include <cstring>

namespace udm {

std::string Status::to_string() const {
  if (ok()) return "OK";
  return message_ + " (" + std::strerror(code_) + ")";
}

Status Status::context(std::string_view ctx) const {
  if (ok()) return *this;
  return Error(code_, std::string(ctx) + ": " + message_);
}

Status ErrnoStatus(std::string_view what, int err) {
  return Status::Error(err == 0 ? EIO : err, std::string(what) + ": " + std::strerror(err));
}

}  // namespace udm
