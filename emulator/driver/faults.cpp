/*
 * faults.cpp: fault injection and overrides read from the environment once, at first use.
 * TACHYON_EMU_MEMORY_BYTES is read by the runtime's arena (the reported total and the
 * allocation limit); the rest are here. See emulator/README.md.
 */
#include <cerrno>
#include <cstdlib>

#include "internal.h"

namespace emu::drv {

namespace {

long env_long(const char* name, long fallback) {
    const char* v = getenv(name);
    if (v == nullptr || *v == '\0') return fallback;
    char* end = nullptr;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || n < 0) {
        say(std::string("ignoring ") + name + "=" + v + " (not a non-negative integer)");
        return fallback;
    }
    return n;
}

Faults read_faults() {
    Faults f;
    f.fail_alloc = env_long("TACHYON_EMU_FAIL_ALLOC", 0);
    f.fail_launch = env_long("TACHYON_EMU_FAIL_LAUNCH", 0);
    f.fail_module = env_long("TACHYON_EMU_FAIL_MODULE", 0) != 0;
    f.driver_version = static_cast<int>(env_long("TACHYON_EMU_DRIVER_VERSION", 13000));
    return f;
}

long g_allocs = 0;
long g_launches = 0;

}  // namespace

const Faults& faults() {
    static const Faults f = read_faults();
    return f;
}

bool inject_alloc_failure() {
    ++g_allocs;
    return faults().fail_alloc != 0 && g_allocs == faults().fail_alloc;
}

bool inject_launch_failure() {
    ++g_launches;
    return faults().fail_launch != 0 && g_launches == faults().fail_launch;
}

}  // namespace emu::drv
