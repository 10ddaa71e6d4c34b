#include "util/log.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace udm::log {
namespace {
Level initial() {
  const char* e = std::getenv("UDM_LOG");
  if (!e) return Level::Warn;
  if (!std::strcmp(e, "debug")) return Level::Debug;
  if (!std::strcmp(e, "info")) return Level::Info;
  if (!std::strcmp(e, "error")) return Level::Error;
  return Level::Warn;
}
std::atomic<Level> g_level{initial()};
std::mutex g_mu;
}  // namespace

Level threshold() { return g_level.load(std::memory_order_relaxed); }
void set_threshold(Level l) { g_level.store(l); }

void write(Level l, std::string_view msg) {
  static const char* names[] = {"debug", "info", "warn", "error"};
  std::lock_guard lk(g_mu);
  std::fprintf(stderr, "udm: %s: %.*s\n", names[static_cast<int>(l)], static_cast<int>(msg.size()),
               msg.data());
}

}  // namespace udm::log
