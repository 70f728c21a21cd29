/* The baseline for bench/run: a bare evhttp server answering every request with
 * a fixed small JSON body on the loop thread (no workers, no auth, no store). */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <stdio.h>
#include <stdlib.h>

static void handle(struct evhttp_request *req, void *arg)
{
    (void)arg;
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "{\"items\":[],\"next_cursor\":null}");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 0;
    struct event_base *base = event_base_new();
    struct evhttp *http = evhttp_new(base);
    evhttp_set_gencb(http, handle, NULL);
    if (evhttp_bind_socket(http, "127.0.0.1", (ev_uint16_t)port) != 0) {
        fprintf(stderr, "bare_evhttp: cannot bind 127.0.0.1:%d\n", port);
        return 1;
    }
    fprintf(stderr, "bare_evhttp ready\n");
    event_base_dispatch(base);
    evhttp_free(http);
    event_base_free(base);
    return 0;
}
