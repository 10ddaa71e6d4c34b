// The NBD wire format (fixed newstyle handshake, simple and structured
// replies), as pure encode/decode functions over bytes, so the fuzzers reach
// them without sockets. Numbers are big-endian on the wire. Reference: the NBD
// protocol document (proto.md in the NetworkBlockDevice/nbd repository).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "device/block_device.h"
#include "util/status.h"

namespace udm::nbd {

constexpr uint64_t kMagic = 0x4e42444d41474943ull;        // "NBDMAGIC"
constexpr uint64_t kOptMagic = 0x49484156454F5054ull;     // "IHAVEOPT"
constexpr uint64_t kOptReplyMagic = 0x3e889045565a9ull;
constexpr uint32_t kRequestMagic = 0x25609513;
constexpr uint32_t kSimpleReplyMagic = 0x67446698;
constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;

// Handshake flags (server) and client flags.
constexpr uint16_t kFlagFixedNewstyle = 1, kFlagNoZeroes = 2;
constexpr uint32_t kClientFixedNewstyle = 1, kClientNoZeroes = 2;

// Options.
enum : uint32_t {
  kOptExportName = 1, kOptAbort = 2, kOptList = 3, kOptStartTls = 5, kOptInfo = 6, kOptGo = 7,
  kOptStructuredReply = 8, kOptListMetaContext = 9, kOptSetMetaContext = 10,
};
// Option reply types.
constexpr uint32_t kRepAck = 1, kRepServer = 2, kRepInfo = 3, kRepMetaContext = 4;
constexpr uint32_t kRepErrBit = 1u << 31;
constexpr uint32_t kRepErrUnsup = kRepErrBit + 1, kRepErrPolicy = kRepErrBit + 2,
                   kRepErrInvalid = kRepErrBit + 3, kRepErrTlsReqd = kRepErrBit + 5,
                   kRepErrUnknown = kRepErrBit + 6,
                   kRepErrShutdown = kRepErrBit + 7, kRepErrTooBig = kRepErrBit + 9;
// NBD_INFO_*.
constexpr uint16_t kInfoExport = 0, kInfoName = 1, kInfoDescription = 2, kInfoBlockSize = 3;

// Transmission flags.
constexpr uint16_t kTxHasFlags = 1, kTxReadOnly = 2, kTxSendFlush = 4, kTxSendFua = 8,
                   kTxSendTrim = 32, kTxSendWriteZeroes = 64, kTxSendDf = 128,
                   kTxCanMultiConn = 256, kTxSendCache = 1024, kTxSendFastZero = 2048;
// Commands and command flags.
enum : uint16_t {
  kCmdRead = 0, kCmdWrite = 1, kCmdDisc = 2, kCmdFlush = 3, kCmdTrim = 4, kCmdCache = 5,
  kCmdWriteZeroes = 6, kCmdBlockStatus = 7,
};
constexpr uint16_t kCmdFlagFua = 1, kCmdFlagNoHole = 2, kCmdFlagDf = 4, kCmdFlagReqOne = 8,
                   kCmdFlagFastZero = 16;
// Structured reply chunk types and flags.
constexpr uint16_t kReplyFlagDone = 1;
constexpr uint16_t kReplyTypeNone = 0, kReplyTypeOffsetData = 1, kReplyTypeBlockStatus = 5,
                   kReplyTypeError = 32769, kReplyTypeErrorOffset = 32770;
// base:allocation status bits.
constexpr uint32_t kStateHole = 1, kStateZero = 2;
// Errors on the wire.
constexpr uint32_t kEperm = 1, kEio = 5, kEnomem = 12, kEinval = 22, kEnospc = 28,
                   kEoverflow = 75, kEnotsup = 95, kEshutdown = 108;

constexpr size_t kRequestSize = 28;
constexpr uint32_t kMaxPayload = 32u << 20;     // largest READ/WRITE we advertise (NBD_INFO_BLOCK_SIZE)
// Largest READ/WRITE we accept: clients that enter with NBD_OPT_EXPORT_NAME
// never see the advertised maximum (nbdkit takes 64 MiB too). Requests above
// kMaxPayload are served in pieces of kMaxPayload.
constexpr uint32_t kMaxRequest = 64u << 20;
constexpr uint32_t kMaxOptionLength = 64u << 10; // larger options close the connection
constexpr uint32_t kMinBlock = 512, kPreferredBlock = 4096;

uint16_t get_be16(const uint8_t* p);
uint32_t get_be32(const uint8_t* p);
uint64_t get_be64(const uint8_t* p);
void put_be16(std::vector<uint8_t>& v, uint16_t x);
void put_be32(std::vector<uint8_t>& v, uint32_t x);
void put_be64(std::vector<uint8_t>& v, uint64_t x);

struct Request {
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t cookie = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
};

// Header of a request; fails (the connection must close) on a bad magic.
Result<Request> decode_request(std::span<const uint8_t> header);

struct ExportLimits {
  uint64_t size = 0;
  bool read_only = false;
  bool structured = false;  // structured replies negotiated (DF allowed)
  bool meta = false;        // a meta context was set (BLOCK_STATUS allowed)
};

// What to do with a decoded request.
struct Check {
  uint32_t error = 0;      // NBD error to reply with (0 = serve it)
  bool close = false;      // protocol violation we cannot recover from
  std::string message;     // for the log and structured error replies
};
Check check_request(const Request& r, const ExportLimits& lim);

// Map a udm Status errno onto the NBD errors.
uint32_t errno_to_nbd(int err);

// Payload of NBD_OPT_INFO / NBD_OPT_GO.
struct InfoRequest {
  std::string name;
  std::vector<uint16_t> infos;
};
Result<InfoRequest> parse_info_request(std::span<const uint8_t> data);

// Meta contexts (NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT): the
// ids we hand out, one per context we know.
constexpr uint32_t kMetaBaseAllocation = 1, kMetaQemuAllocationDepth = 2;
constexpr size_t kMaxMetaQuery = 4096;     // longer query strings: NBD_REP_ERR_TOO_BIG
constexpr uint32_t kMaxMetaQueries = 128;  // more queries: NBD_REP_ERR_TOO_BIG
struct MetaContextRequest {
  std::string name;                  // export name
  std::vector<std::string> queries;
};
// Refusals carry E2BIG (reply NBD_REP_ERR_TOO_BIG) or EINVAL (NBD_REP_ERR_INVALID).
Result<MetaContextRequest> parse_meta_context_request(std::span<const uint8_t> data);
// The context ids the queries select, in id order, without duplicates. LIST:
// no query selects every context and a bare namespace ("base:", "qemu:")
// every context in it; SET: exact names only.
std::vector<uint32_t> select_meta_contexts(const std::vector<std::string>& queries, bool list);
const char* meta_context_name(uint32_t id);
// Data of an NBD_REP_META_CONTEXT reply.
std::vector<uint8_t> meta_context_reply(uint32_t id);

// One NBD_REPLY_TYPE_BLOCK_STATUS chunk for context `id`: descriptors
// (length, status) from an allocation map covering at most `length` bytes,
// alike neighbours merged; req_one keeps only the first. base:allocation:
// hole = HOLE|ZERO, zero = ZERO, data = 0; qemu:allocation-depth: 0 for holes,
// else the layer (1 = top). The map must not be empty.
std::vector<uint8_t> block_status_chunk(uint64_t cookie, bool done, uint32_t id, const AllocMap& map,
                                        bool req_one);

std::vector<uint8_t> option_reply(uint32_t option, uint32_t type, std::span<const uint8_t> data = {});
std::vector<uint8_t> info_export(uint64_t size, uint16_t tx_flags);
std::vector<uint8_t> info_block_size(uint32_t min, uint32_t preferred, uint32_t max);
std::vector<uint8_t> info_name(const std::string& name);
// 16-byte simple reply header.
void simple_reply(uint8_t out[16], uint64_t cookie, uint32_t error);
// 20-byte structured chunk header (+ for OFFSET_DATA the 8-byte offset follows: 28 total).
void structured_header(uint8_t out[20], uint64_t cookie, uint16_t flags, uint16_t type,
                       uint32_t length);
std::vector<uint8_t> structured_error(uint64_t cookie, uint32_t error, const std::string& msg);

}  // namespace udm::nbd
