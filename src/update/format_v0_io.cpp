#include "update/format_v0_io.h"

#include <algorithm>

namespace udm::update {

Result<DiffIndex> load_diff(BlockDevice& dev) {
  const uint64_t size = dev.size();
  std::vector<uint8_t> sbb(std::min<uint64_t>(size, kSuperblockSize));
  if (size >= kSuperblockSize) UDM_TRY(dev.read(0, sbb));
  UDM_ASSIGN_OR_RETURN(DiffIndex idx, parse_v0_superblock(sbb, size));
  std::vector<uint8_t> cdir(idx.sb.dir_compressed_size);
  UDM_TRY(dev.read(idx.sb.dir_offset, cdir));
  UDM_TRY(parse_v0_directory(idx, cdir));
  return idx;
}

Status read_chunk(BlockDevice& diff, const DiffIndex& idx, size_t ci, std::vector<uint8_t>& scratch,
                  std::span<uint8_t> out) {
  const Chunk& c = idx.chunks[ci];
  scratch.resize(c.length);
  UDM_TRY(diff.read(c.src, scratch));
  return decode_v0_chunk(idx, ci, scratch, out);
}

Status write_progress(BlockDevice& diff, const DiffIndex& idx, uint64_t done) {
  // pad2 lives in the first sector; read-modify-write the sector so devices
  // with 512-byte granularity see a whole-sector write.
  std::vector<uint8_t> sector(std::min<uint64_t>(512, diff.size()));
  UDM_TRY(diff.read(0, sector));
  put_v0_progress(sector, done);
  return diff.write(0, sector, /*fua=*/true);
}

}  // namespace udm::update
