/* libFuzzer harness for the config parser: any bytes as a gantry.conf, then the
 * derived values, the cross checks and --show-config. No crash, no leak, no UB. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static FILE *sink;
    if (sink == NULL)
        sink = fopen("/dev/null", "w");
    gt_config *cfg = gt_config_new();
    gt_error err = {0};
    if (gt_config_load_buffer(cfg, (const char *)data, size, "fuzz.conf", &err) == GT_OK) {
        gt_config_finish(cfg, &err);
        gt_config_client_profile(cfg, "a");
        if (sink)
            gt_config_dump(cfg, sink);
    }
    gt_config_free(&cfg);
    return 0;
}
