// One reader for a table line's arguments, as device-mapper's dm_arg_set and
// dm_read_arg_group: targets shift positional arguments off the front and
// read an optional `<#opt_args> <opt>...` group, and every error names the
// target and the argument ("bow: block_size: 3000 is not a power of two").
//
//   TargetArgs a("linear", p.args);
//   UDM_ASSIGN_OR_RETURN(std::string dev, a.next("<device>"));
//   UDM_ASSIGN_OR_RETURN(uint64_t off, a.next_sectors("<offset_sectors>"));
//   UDM_TRY(a.done());
//
//   UDM_ASSIGN_OR_RETURN(OptArgs o, a.opt_group());       // absent: empty
//   UDM_ASSIGN_OR_RETURN(bool drop, o.choice("on_full", {"fail", "drop"}, "fail"));
//   UDM_ASSIGN_OR_RETURN(auto bs, o.size("block_size"));  // optional<uint64_t>
//   UDM_TRY(o.done());                                    // unknown options
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "util/status.h"

namespace udm {

// Number parsers shared by every argument reader; `what` names the argument.
// Decimal integers only (no sign, no spaces, no hex), overflow refused.
Result<uint64_t> parse_u64(std::string_view s, std::string_view what);
// A byte size: an integer with an optional binary unit suffix
// (k/K, m/M, g/G, t/T, optionally followed by "iB" or "B"): "4096", "64k", "1MiB".
Result<uint64_t> parse_size(std::string_view s, std::string_view what);

class OptArgs;

class TargetArgs {
 public:
  TargetArgs(std::string target, const std::vector<std::string>& args);

  size_t remaining() const { return args_.size() - pos_; }
  bool empty() const { return remaining() == 0; }

  // The next positional argument; "missing <what>" if none is left.
  Result<std::string> next(std::string_view what);
  Result<uint64_t> next_u64(std::string_view what, uint64_t min = 0, uint64_t max = UINT64_MAX);
  // A count of 512-byte sectors, returned in bytes (overflow refused).
  Result<uint64_t> next_sectors(std::string_view what);
  Result<uint64_t> next_size(std::string_view what);
  // `<#opt_args> <opt>...` if arguments remain, else an empty group. The count
  // must equal the number of tokens that follow in the group (values of
  // `key value` options count, as in dm's tables); at most `max` tokens.
  Result<OptArgs> opt_group(unsigned max = 64);
  // Every argument consumed? Names the first extra one otherwise.
  Status done() const;

  // "<target>: <what>: <msg>" as EINVAL.
  Status error(std::string_view what, std::string_view msg) const;
  const std::string& target() const { return target_; }

 private:
  std::string target_;
  std::vector<std::string> args_;
  size_t pos_ = 0;
};

// The optional arguments of a table line: flags (`no_bg_update`), `key=value`
// tokens and `key value` pairs. Each accessor consumes what it reads; done()
// refuses whatever is left, listing the options the target knows.
class OptArgs {
 public:
  OptArgs() = default;
  OptArgs(std::string target, std::vector<std::string> tokens)
      : target_(std::move(target)), tokens_(std::move(tokens)), used_(tokens_.size(), false) {}

  bool empty() const { return tokens_.empty(); }
  // A bare flag; true if present (each flag at most once).
  Result<bool> flag(std::string_view name);
  // `key=value` (or `key value` when pair is true).
  Result<std::optional<std::string>> value(std::string_view key, bool pair = false);
  Result<std::optional<uint64_t>> u64(std::string_view key, uint64_t min = 0, uint64_t max = UINT64_MAX,
                                      bool pair = false);
  Result<std::optional<uint64_t>> size(std::string_view key, bool pair = false);
  // `key=<one of choices>`; returns the choice or `dflt` when absent.
  Result<std::string> choice(std::string_view key, const std::vector<std::string>& choices,
                             std::string dflt);
  // Refuses unconsumed tokens, naming the first and the known options.
  Status done() const;

 private:
  Status error(std::string_view what, std::string_view msg) const;
  std::string target_;
  std::vector<std::string> tokens_;
  std::vector<bool> used_;
  std::vector<std::string> known_;  // names asked for, for the error message
};

}  // namespace udm
