// Minimal thread-safe logging to stderr (journald picks stderr up when the
// daemon runs under systemd). Level from UDM_LOG=debug|info|warn|error.
#pragma once

#include <fmt/format.h>

#include <string_view>

namespace udm::log {

enum class Level { Debug = 0, Info = 1, Warn = 2, Error = 3 };

Level threshold();
void set_threshold(Level l);
void write(Level l, std::string_view msg);

template <class... A>
void debug(fmt::format_string<A...> f, A&&... a) {
  if (threshold() <= Level::Debug) write(Level::Debug, fmt::format(f, std::forward<A>(a)...));
}
template <class... A>
void info(fmt::format_string<A...> f, A&&... a) {
  if (threshold() <= Level::Info) write(Level::Info, fmt::format(f, std::forward<A>(a)...));
}
template <class... A>
void warn(fmt::format_string<A...> f, A&&... a) {
  if (threshold() <= Level::Warn) write(Level::Warn, fmt::format(f, std::forward<A>(a)...));
}
template <class... A>
void error(fmt::format_string<A...> f, A&&... a) {
  if (threshold() <= Level::Error) write(Level::Error, fmt::format(f, std::forward<A>(a)...));
}

}  // namespace udm::log
