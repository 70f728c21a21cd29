/* libFuzzer harness for the run messages runners take from RabbitMQ: any bytes must
 * parse or fail cleanly, and what parses must build back to an equal message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *id = NULL;
    int64_t attempt = 0;
    if (gt_execution_message_parse((const char *)data, size, &id, &attempt, NULL) == GT_OK) {
        char *again = gt_execution_message(id, attempt);
        char *id2 = NULL;
        int64_t attempt2 = 0;
        if (gt_execution_message_parse(again, strlen(again), &id2, &attempt2, NULL) != GT_OK ||
            strcmp(id, id2) != 0 || attempt != attempt2)
            abort();
        free(id2);
        free(again);
        free(id);
    }
    return 0;
}
