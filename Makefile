# Gantry build. `make` builds the release binaries into build/; `make test` builds
# everything with AddressSanitizer + UndefinedBehaviorSanitizer into build/san and runs
# every test tier; `make demo` installs what is needed and runs the examples.
# Quiet unless V=1. Dependencies tracked with -MMD -MP, so only what changed rebuilds.

CC       ?= cc
BUILD    ?= build
# One spelling per build directory: -MMD names each target as BUILD was spelled, so a
# build given as $(CURDIR)/build (bench scripts) and then as build would lose the header
# dependencies of every object and link stale ones.
override BUILD := $(patsubst $(CURDIR)/%,%,$(abspath $(BUILD)))
SANITIZE ?=
O        ?= -O2
PKGS     := libcjson sqlite3 openssl libpcre2-8 libevent libevent_openssl libevent_pthreads \
            hiredis librabbitmq libargon2 yaml-0.1 libcurl libmongoc-1.0 libbson-1.0
TESTPKGS := cmocka

V ?= 0
ifeq ($(V),0)
Q = @
say = @printf '  %-7s %s\n' $(1) $(2);
else
Q =
say =
endif

VERSION := 0.1.0
WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wformat=2 -Werror
# pkg-config is asked when a recipe first needs its answer, not while this file is read:
# `make demo` and `make test` install the packages first (scripts/install-deps). The answer
# is kept for the rest of the run; a missing library stops the build with one line that
# names its Debian package (scripts/pkgflags).
pkgq = $(call pkgchk,$(shell scripts/pkgflags $(1) $(2) || echo FAIL))
pkgchk = $(if $(filter FAIL,$(1)),$(error missing libraries (see the line above)),$(1))
PKG_CFLAGS = $(eval PKG_CFLAGS := $(call pkgq,--cflags,$(PKGS)))$(PKG_CFLAGS)
PKG_LIBS   = $(eval PKG_LIBS := $(call pkgq,--libs,$(PKGS)))$(PKG_LIBS)
TEST_CFLAGS = $(eval TEST_CFLAGS := $(call pkgq,--cflags,$(TESTPKGS)))$(TEST_CFLAGS)
TEST_LIBS   = $(eval TEST_LIBS := $(call pkgq,--libs,$(TESTPKGS)))$(TEST_LIBS)
CFLAGS  = -std=c11 -D_GNU_SOURCE -DGANTRY_VERSION=\"$(VERSION)\" $(O) -g $(WARN) -MMD -MP -Icommon \
           $(PKG_CFLAGS)
LDLIBS  = $(PKG_LIBS) -lpthread -lm
ifneq ($(SANITIZE),)
CFLAGS  += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=$(SANITIZE)
endif

COMMON_SRC := $(wildcard common/*.c common/model/*.c)
COMMON_OBJ := $(COMMON_SRC:%.c=$(BUILD)/%.o)
LIB        := $(BUILD)/libgantry.a

CLI_SRC := $(wildcard services/cli/*.c)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
# Daemons: services/<name>/*.c -> gantry-<name>
DAEMONS := $(filter-out cli,$(notdir $(wildcard services/*)))
BINS    := $(BUILD)/gantry $(DAEMONS:%=$(BUILD)/gantry-%)

UNIT_SRC  := $(wildcard tests/unit/*_test.c)
UNIT_BINS := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/unit/%)
UNIT_HELPERS := $(filter-out %_test.c,$(wildcard tests/unit/*.c))
UNIT_HELPER_OBJ := $(UNIT_HELPERS:%.c=$(BUILD)/%.o)

.PHONY: all test unit integration fuzz fuzz-run demo bench bench-bins clean deps install
# keep every object: none is a throwaway intermediate, so only what changed rebuilds
.SECONDARY:
all: $(BINS)

$(BUILD)/%.o: %.c
	$(call say,CC,$<)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) -c $< -o $@

$(LIB): $(COMMON_OBJ)
	$(call say,AR,$@)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/gantry: $(CLI_OBJ) $(LIB)
	$(call say,LD,$@)
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

define daemon_rule
$(BUILD)/gantry-$(1): $(patsubst %.c,$(BUILD)/%.o,$(wildcard services/$(1)/*.c)) $(LIB)
	$$(call say,LD,$$@)
	$$(Q)$$(CC) $$(LDFLAGS) $$^ $$(LDLIBS) -o $$@
endef
$(foreach d,$(DAEMONS),$(eval $(call daemon_rule,$(d))))

$(BUILD)/tests/unit/%_test.o: CFLAGS += $(TEST_CFLAGS)
$(BUILD)/tests/unit/%_test: $(BUILD)/tests/unit/%_test.o $(UNIT_HELPER_OBJ) $(LIB)
	$(call say,LD,$@)
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) $(TEST_LIBS) -o $@

deps:
	@scripts/install-deps

# The whole suite, sanitized. Each tier prints its own summary lines.
test:
	$(Q)start=$$(date +%s); scripts/install-deps && \
	$(MAKE) --no-print-directory BUILD=build/san SANITIZE=address,undefined O=-O1 \
		$(BINS:$(BUILD)/%=build/san/%) $(UNIT_BINS:$(BUILD)/%=build/san/%) && \
	scripts/test-servers run -- scripts/run-unit build/san && \
	GANTRY_BIN=$(CURDIR)/build/san/gantry GANTRY_BIN_DIR=$(CURDIR)/build/san scripts/run-integration && \
	$(MAKE) --no-print-directory fuzz-run && \
	echo "make test: passed in $$(( $$(date +%s) - start )) s"

unit: $(UNIT_BINS)
	$(Q)scripts/run-unit $(BUILD)

integration: $(BINS)
	$(Q)GANTRY_BIN=$(CURDIR)/$(BUILD)/gantry scripts/run-integration

# libFuzzer harnesses (clang): every parser of outside input has one.
FUZZ_SRC  := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS := $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/%)
FUZZ_SECONDS ?= 10
FUZZ_CFLAGS = -std=c11 -D_GNU_SOURCE -O1 -g -Wall -Wextra -Werror -Icommon \
               -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
               $(PKG_CFLAGS)
FUZZ_COMMON := $(COMMON_SRC:%.c=build/fuzz/%.o)
build/fuzz/common/%.o: common/%.c
	$(call say,CLANG,$<)
	@mkdir -p $(dir $@)
	$(Q)clang $(filter-out -fsanitize=fuzzer%,$(FUZZ_CFLAGS)) -fsanitize=fuzzer-no-link,address,undefined -MMD -MP -c $< -o $@
build/fuzz/%: tests/fuzz/%.c $(FUZZ_COMMON)
	$(call say,CLANG,$<)
	@mkdir -p $(dir $@)
	$(Q)clang $(FUZZ_CFLAGS) $^ $(LDLIBS) -o $@
fuzz: $(FUZZ_BINS)
fuzz-run: fuzz
	$(Q)scripts/run-fuzz $(FUZZ_SECONDS) $(FUZZ_BINS)

# demo and bench build in a second make, which reads the flags after install-deps ran
demo:
	$(Q)start=$$(date +%s); scripts/install-deps && $(MAKE) --no-print-directory all && \
	scripts/demo && echo "make demo: done in $$(( $$(date +%s) - start )) s"

$(BUILD)/bench/bare_evhttp: bench/bare_evhttp.c
	$(call say,CC,$<)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) $< $(LDLIBS) -o $@

$(BUILD)/bench/spawn_rate: bench/spawn_rate.c
	$(call say,CC,$<)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) $< -lpthread -o $@

$(BUILD)/bench/store_bench: $(BUILD)/bench/store_bench.o $(LIB)
	$(call say,LD,$@)
	$(Q)$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# the sandbox a run gets, through the library itself
$(BUILD)/bench/sandbox_rate: bench/sandbox_rate.c $(LIB)
	$(call say,CC,$<)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) $< $(LIB) $(LDLIBS) -o $@

BENCH_BINS := $(BUILD)/bench/bare_evhttp $(BUILD)/bench/spawn_rate $(BUILD)/bench/sandbox_rate \
              $(BUILD)/bench/store_bench
bench-bins: all $(BENCH_BINS)
# bench/run and bench/runner.py install and build what they need themselves
bench:
	$(Q)bench/run --bin $(CURDIR)/$(BUILD)

install: all
	for b in $(BINS); do install -D -m 0755 $$b $(DESTDIR)/usr/local/bin/$$(basename $$b); done

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
