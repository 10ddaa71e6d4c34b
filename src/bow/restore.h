// Reading a bow log chain and rolling a device back to its checkpoint (the
// seed's missing "command line utility"; `udm bow-restore`).
//
// The chain is read newest first, as it is restored. Because a block that
// held a backup may itself have been overwritten (and so backed up again),
// the current contents of a dest are not always the saved data: the reader
// simulates every copy of the restore on a block-remapping table, so each
// entry's checksum is verified against the bytes the restore will really
// copy, and each older log block is read from where it will really be when
// the restore reaches it. Nothing is written before the whole chain has been
// read and verified.
//
// Crash safety of the restore itself: a dest is only ever overwritten by the
// restore of a newer entry, with the very bytes it held when it was saved
// (free space is never reused for backups once a block has been a source), so
// replaying any suffix of the copies again is harmless; the device is flushed
// before every rewrite of block 0, so block 0 always names a log whose older
// entries are not yet restored. An interrupted restore is simply run again.
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "bow/bow_format.h"
#include "device/block_device.h"

namespace udm::bow {

struct EntryId {
  uint32_t sequence;
  uint32_t index;
  auto operator<=>(const EntryId&) const = default;
};
std::string to_string(EntryId id);
// "SEQ:IDX[,SEQ:IDX...]"
Result<std::set<EntryId>> parse_entry_ids(const std::string& s);

struct ChainStep {
  EntryId id;
  LogEntry entry;
  bool checked = false;  // checksum present and verified
};

struct Chain {
  uint32_t block_size = 0;
  uint64_t sector0 = 0;       // live block 0 (from the newest log)
  uint64_t intent = 0;        // the newest log's intent block (sector; 0: none)
  uint32_t newest_sequence = 0;
  std::vector<ChainStep> steps;  // restore order (newest first)
  std::vector<EntryId> skipped;  // entries left out on request (--force)
  bool complete = true;          // false if a skipped log-block entry cut the chain
  bool committing = false;       // block 0 carries kCommitMark (only with allow_committing)
  // Where the older log blocks were read from (physical block numbers, newest
  // first): the commit zeroes them oldest first.
  std::vector<uint64_t> log_blocks;
  uint64_t bytes() const;
};

struct ChainOptions {
  bool verify = true;           // check entry checksums
  std::set<EntryId> skip;       // entries to leave out even if they are bad
  // A log marked as being committed is refused (EBUSY: it cannot be rolled
  // back any more) unless this is set; the target sets it to finish the commit.
  bool allow_committing = false;
  // Stop quietly at the first older log block that cannot be read (complete
  // = false) instead of reporting it. Only for finishing a commit, which zeroes
  // older log blocks oldest first after every data copy.
  bool tolerant = false;
};

// ENOENT if block 0 holds no bow log. EBUSY if it is marked as being
// committed (and !opts.allow_committing). EUCLEAN with every problem (each named
// by its SEQ:IDX) if the chain is damaged and the damaged entries are not all
// in opts.skip.
Result<Chain> read_chain(BlockDevice& dev, const ChainOptions& opts = {});

// Applies a chain read from `dev` (restore order, flushes as described
// above). If the chain is incomplete (cut by --force), block 0 gets the live
// block 0 back so the device is at least not left with a log in block 0.
// Then, the log being gone, the blocks bow used (every dest, the live block
// 0's block, the intent block and what it lists) are zeroed: all of them were
// free at the checkpoint, and free blocks are zero under udm. (A cut during
// that last step leaves some of them as they were: nothing names them then.)
// `progress(bytes_done)` is called after each entry.
Status apply_chain(BlockDevice& dev, const Chain& chain,
                   const std::function<void(uint64_t)>& progress = {});

}  // namespace udm::bow
