// Feature "verity": the dm-verity target (target.cpp), its format (format.cpp),
// root-hash signatures (signature.cpp) and the verity-* tools (cli.cpp).
#include "device/feature.h"
#include "verity/target.h"

namespace udm {
void register_feature_verity(Features& f) {
  f.targets.add("verity", verity::make_verity,
                "verity <0|1> <data_dev> <hash_dev> <data_block_size> <hash_block_size> <num_data_blocks> "
                "<hash_start_block> <algorithm> <root_hex> <salt_hex|-> [<#opt_args> ignore_corruption|"
                "restart_on_corruption|panic_on_corruption restart_on_error|panic_on_error ignore_zero_blocks "
                "check_at_most_once root_hash_sig_key_desc <desc> root_hash_sig <file.p7s>]");
}
}  // namespace udm
