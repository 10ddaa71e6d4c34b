// bow <dev> [<#opt_args> on_full=fail|drop block_size=N]: backup-on-write
// into the device's own free space (seed 001, Android's dm-bow), with the
// prototype's known bugs fixed. See docs/bow.md for the full story.
//
// States (message "state 1" / "state 2", only 0 -> 1 -> 2):
//  0 trim:       discards and zero-outs that may unmap mark whole blocks FREE
//                and zero them on the device (write_zeroes with unmap); a
//                write "un-trims" the blocks it touches (so writes racing with
//                FITRIM in state 0 are safe: a written block is never backup
//                space); block 0 is never free.
//  1 checkpoint: block 0 holds the log; the live block 0 is relocated to a
//                free block. A write to UNCHANGED or BACKUP blocks first copies
//                them into FREE blocks and logs the copy durably; writes to
//                FREE or CHANGED blocks go straight down.
//  2 committed:  the saved copies and the relocated block 0 are zeroed, the
//                live block 0 is copied home, all state is freed,
//                pass-through.
//
// What reads return: a block that is free in the filesystem's view (trimmed
// or zeroed with unmap, not written since) reads as zeroes in every state and
// across state changes. FREE blocks are zero on the device; blocks that bow
// fills while they are free in that view (BACKUP copies, log blocks, the live
// block 0, the intent block) are masked: reads of them return zeroes, a
// partial write to one fills the rest of the block with zeroes, and the
// commit zeroes them on the device before the target passes through. Before
// a group commit fills free blocks, the intent block lists them, so a target
// resuming after a power cut finds and zeroes those the log does not name.
//
// Concurrency: one mutex guards the range map and is never held across I/O.
// Writes that need backups queue jobs; the committer thread handles every
// queued job as one batch (intent, flush, copies, flush, log write, flush:
// group commit), while writes to other blocks go on.
// Blocks being backed up are marked busy; only writes overlapping them wait.
#pragma once

#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <thread>

#include "bow/bow_format.h"
#include "bow/range_map.h"
#include "device/target.h"

namespace udm::bow {

struct BowOptions {
  bool drop_on_full = false;  // on_full=drop
  uint32_t block_size = 4096;
  // Acknowledge writes that need a backup before the backup is committed
  // (the write goes down after its log entry is durable; reads see it at
  // once; flush waits for it). Off: every such write waits for its backup
  // (deterministic I/O order, used by the crash sweeps too).
  bool write_back = true;
};

struct BowStats {
  int state = 0;
  uint64_t free_bytes = 0;
  uint64_t backed_up_bytes = 0;  // data saved by log entries (log blocks excluded)
  uint64_t entries = 0;          // log entries in the whole chain
  uint32_t sequence = 0;
  uint64_t batches = 0;  // group commits (each: intent, flush, copies, flush, log, flush)
  bool dropped = false;  // on_full=drop happened: checkpoint abandoned
  bool resumed = false;  // the checkpoint was found on the device at creation
  bool commit_finished = false;  // ... marked as being committed: create() finished it
  uint64_t zeroed_bytes = 0;     // copies and block-0 relocations zeroed by the commit
  uint64_t unlogged_zeroed_bytes = 0;  // resume: blocks of an unfinished group commit zeroed
  bool failed = false;   // an I/O error stopped the target (writes fail)
};

class BowTarget : public Target {
 public:
  // length: the segment length; the target uses bytes [0, length) of dev.
  static Result<std::shared_ptr<BowTarget>> create(DevicePtr dev, uint64_t length,
                                                   BowOptions opts);
  ~BowTarget() override;

  std::string type() const override { return "bow"; }
  uint64_t size() const override { return size_; }
  DeviceCaps caps() const override;
  std::string status() const override;
  Result<std::string> message(const std::vector<std::string>& args) override;

  Status set_state(int state);
  BowStats stats() const;
  // For tests: the type of a block (under the lock).
  BlockType block_type(uint64_t block) const;
  bool map_consistent() const;

 protected:
  Status do_read(uint64_t off, std::span<uint8_t> buf) override;
  Status do_write(uint64_t off, std::span<const uint8_t> buf, bool fua) override;
  Status do_trim(uint64_t off, uint64_t len) override;
  Status do_write_zeroes(uint64_t off, uint64_t len, bool fua, bool may_unmap) override;
  Status do_flush() override;
  // Blocks free in the filesystem's view read as zeroes: holes (state 0:
  // FREE blocks, zeroed on the device when they were freed; state 1: the
  // masked blocks, as reads see them), except blocks being written or under
  // a write-back job not yet on the device. The rest: in states 0 and 2 the
  // device's own map (its bytes are the view's), in state 1 data (block 0
  // lives elsewhere and queued writes lie over the device's bytes).
  Status do_allocation(uint64_t off, uint64_t len, AllocMap& out) override;

 private:
  BowTarget(DevicePtr dev, uint64_t length, BowOptions opts);
  Status load_existing();

  struct Copy {
    uint64_t src, dst, n;  // blocks
    uint32_t crc = 0;
  };
  // A backup to commit. Sources, dests, a new home for the live block 0 and
  // log blocks for rollovers are all allocated when the job is queued, so
  // ENOSPC is known at once.
  //
  // A carried job also carries its write: the committer sends it down after
  // the backup's log entry is durable. Write-back jobs are carried and not
  // waited for (the writer is acknowledged at once); a write that must fill a
  // partial masked block with zeroes, or that overwrites bow's own blocks, is
  // carried too (its whole blocks stay busy until it is down), and waited for
  // unless it is write-back.
  struct Job {
    std::vector<Copy> copies;
    std::vector<std::pair<uint64_t, uint64_t>> busy;  // ranges marked busy
    std::optional<uint64_t> new_s0;
    std::optional<uint64_t> new_intent;  // the write hits the intent block: it moves
    // Blocks holding bow's data (BACKUP copies, the live block 0, the intent)
    // that this write overwrites once its log entry is durable: listed in the
    // intent until the write is durable (docs/bow.md, "Crash safety").
    std::vector<std::pair<uint64_t, uint64_t>> superseded;
    bool carried = false;
    bool waited = true;
    bool fua = false;
    uint64_t off = 0, len = 0, b0 = 0;  // the carried write (padded to whole blocks if needed)
    std::vector<uint8_t> data;          // its bytes; empty for zeroes
    bool zero = false;
    bool unmap = false;
    std::vector<std::pair<uint64_t, uint64_t>> zero_ranges;  // bytes to zero on the device
    uint64_t seq = 0;
    Status result;
    bool done = false;
  };
  using JobPtr = std::shared_ptr<Job>;

  // Write-type I/O: data, or zeroes when data is null (unmap: whole blocks
  // may be freed).
  Status write_common(uint64_t off, uint64_t len, const uint8_t* data, bool fua, bool unmap);
  Status write_state0(std::unique_lock<std::mutex>& l, uint64_t off, uint64_t len,
                      const uint8_t* data, bool fua, bool unmap);
  // data null: zeroes (unmap: the device may deallocate them).
  Status lower_write(uint64_t off, uint64_t len, const uint8_t* data, bool fua, bool unmap = false);
  Status write_carried(const Job& j);
  // Block-0 aware write / read of [off, off+len) with the state fixed.
  Status io_block0_write(uint64_t off, uint64_t len, const uint8_t* data, bool fua);
  Status io_block0_read(uint64_t off, std::span<uint8_t> buf);
  // Device offset of block 0's bytes: the live copy in state 1 (the caller
  // holds s0_mu_ shared, so it cannot move).
  uint64_t block0_base() const;
  void committer_loop();
  void process_batch(std::unique_lock<std::mutex>& l);
  void finish_job(Job& j, Status s);  // mu_ held
  // Allocates everything `job` needs (mu_ held); false if space ran out
  // (nothing is left allocated then).
  bool plan_job(Job& job, const std::vector<Run>& runs, bool move_s0, bool move_intent);
  // Runs of blocks bow fills that are free in the filesystem's view and hold
  // copies, saved log blocks or the intent (BACKUP, INTENT): the commit zeroes
  // them (mu_ held or no other thread).
  std::vector<std::pair<uint64_t, uint64_t>> owned_runs() const;
  Status copy_blocks(uint64_t src, uint64_t dst, uint64_t n, uint32_t* crc);
  Status checkpoint();
  Status commit(bool dropped);  // caller holds s0_mu_ exclusively
  void enter_passthrough(bool dropped);  // mu_ held
  // The commit's I/O (also run by create() over a device whose log carries
  // the commit mark): mark, zero the copies, put block 0 home, zero the old
  // live block 0. The caller has drained the committer and holds s0_mu_ and
  // intent_mu_ (or no other thread exists yet).
  Status commit_io(uint64_t live, std::vector<std::pair<uint64_t, uint64_t>> backups,
                   bool marked);
  // Byte ranges of [off, off+len) that read as zeroes whatever the device holds
  // (state 1: FREE blocks not written since the checkpoint, BACKUP, SECTOR0,
  // INTENT).
  void masked_ranges(uint64_t off, uint64_t len,
                     std::vector<std::pair<uint64_t, uint64_t>>& out) const;
  bool busy_overlaps(uint64_t s, uint64_t e) const;
  // FREE blocks written since the checkpoint. Writes into free space only set
  // these bits (no map update on the hot path); allocation skips (and then
  // records as CHANGED) the blocks whose bit is set.
  bool written(uint64_t b) const { return (written_[b / 64] >> (b % 64)) & 1; }
  std::optional<Run> alloc_free(uint64_t max_len);
  void busy_add(uint64_t s, uint64_t e);
  void busy_remove(uint64_t s, uint64_t e);

  DevicePtr dev_;
  uint64_t size_;
  BowOptions opts_;
  uint32_t bs_;
  uint64_t blocks_;

  // I/O holds state_mu_ shared; the 0 -> 1 and 1 -> 2 transitions hold it
  // exclusively (they drain I/O first, as dm suspends do).
  mutable std::shared_mutex state_mu_;
  // I/O to block 0 in state 1 holds s0_mu_ shared; relocating the live block
  // 0 and committing hold it exclusively.
  mutable std::shared_mutex s0_mu_;

  mutable std::mutex mu_;  // everything below
  std::condition_variable cv_;
  int state_ = 0;
  RangeMap map_;
  std::map<uint64_t, uint64_t> busy_;  // blocks being saved or filled: start -> end
  std::vector<uint64_t> written_;      // bitmap over blocks (state 1)
  uint64_t written_free_ = 0;          // FREE-typed blocks with their bit set
  uint64_t sector0_block_ = 0;         // live block 0 (state 1)
  uint64_t intent_block_ = 0;          // the intent block (state 1; 0: none)
  std::deque<JobPtr> queue_;
  std::map<uint64_t, JobPtr> deferred_;  // queued carried jobs by first block
  bool committing_ = false;              // the committer has a batch in hand
  bool drop_requested_ = false;
  bool stop_ = false;
  uint64_t next_seq_ = 0, done_seq_ = 0;  // jobs queued / completed (in order)
  uint64_t pending_bytes_ = 0;            // data held by carried jobs
  uint32_t virtual_fill_ = 0;  // entries in the current log block, queued jobs included
  std::deque<uint64_t> log_pool_;  // blocks reserved for log rollovers (busy)
  // Held by the committer from a batch's intent write until its writes are
  // sent down, by a flush that clears the intent, and by the commit.
  std::mutex intent_mu_;
  bool intent_dirty_ = false;  // the durable intent lists superseded blocks (intent_mu_)
  std::thread committer_;
  std::vector<uint8_t> gather_;  // the committer's copy buffer
  Status fatal_;
  BowStats stats_;
  LogBlock log_;  // the log in block 0 (touched only by the committer or transitions)
};

Result<TargetPtr> make_bow_target(const TargetParams& p);

}  // namespace udm::bow
