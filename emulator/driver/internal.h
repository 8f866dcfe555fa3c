/*
 * internal.h: the driver stand-in's own state, shared by the files of emulator/driver.
 *
 * Execution is synchronous: every call that queues work (a launch, an async copy) does the
 * work before it returns, so stream order holds trivially and "async" errors surface at
 * once. What is asynchronous on a real GPU is modelled only where a program can observe
 * it: stream capture (work is recorded, not run), sticky errors, events (host time).
 *
 * One recursive lock serializes every entry point: the test harness calls the driver from
 * many threads, and the device is one device.
 */
#ifndef TACHYON_EMU_DRIVER_INTERNAL_H
#define TACHYON_EMU_DRIVER_INTERNAL_H

#include <cuda.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../runtime/runtime.h"

#define EMU_API extern "C" __attribute__((visibility("default")))

namespace emu::drv {

// ---- Locking and errors -----------------------------------------------------------------
std::recursive_mutex& lock();
#define EMU_LOCK std::lock_guard<std::recursive_mutex> emu_guard_(::emu::drv::lock())

// Prints "emulated-gpu: <msg>" on stderr (one line per message).
void say(const std::string& msg);

// The context's sticky error (a kernel fault); 0 when none. Every call that touches the
// device returns it once it is set, as on a real GPU, until the primary context is reset
// (its last reference released: device.cpp).
CUresult sticky();
void set_sticky(CUresult e);
// Clears the sticky error (a context reset); returns what it was.
CUresult clear_sticky();

// Returns CUDA_ERROR_NOT_INITIALIZED before cuInit, then the sticky error or success.
CUresult ready();

// ---- Configuration from the environment (faults.cpp) ------------------------------------
struct Faults {
    long fail_alloc = 0;      // TACHYON_EMU_FAIL_ALLOC: this allocation (1-based) fails
    long fail_launch = 0;     // TACHYON_EMU_FAIL_LAUNCH: this kernel run fails (sticky)
    bool fail_module = false; // TACHYON_EMU_FAIL_MODULE: module loads fail (222)
    bool fault_is_fatal = false;  // TACHYON_EMU_FAULT_IS_FATAL: a context reset keeps it
    int driver_version = 13000;  // TACHYON_EMU_DRIVER_VERSION
};
const Faults& faults();
// Counters for the injections; return true when this call is the one that must fail.
bool inject_alloc_failure();
bool inject_launch_failure();

// ---- Objects -----------------------------------------------------------------------------
struct Capture;
struct Graph;

struct Stream {
    unsigned flags = 0;         // CU_STREAM_DEFAULT (blocking) or CU_STREAM_NON_BLOCKING
    int priority = 0;
    bool legacy = false;        // the NULL / CU_STREAM_LEGACY stream
    Capture* capture = nullptr; // the capture this stream records into, if any
};

struct Event {
    unsigned flags = 0;
    bool recorded = false;
    std::chrono::steady_clock::time_point when{};
    Capture* captured_in = nullptr;  // last recorded into a capture (not run)
    bool destroyed = false;          // kept alive for graphs that still name it
};

struct Module;

struct Function {
    const KernelInfo* info = nullptr;
    Module* module = nullptr;
    int max_dynamic_smem = 48 * 1024;  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    int preferred_carveout = -1;
    std::vector<size_t> param_sizes;   // bytes of each parameter (0: unknown)
};

struct Module {
    std::string path;
    void* handle = nullptr;
    std::map<std::string, std::unique_ptr<Function>> functions;
    bool unloaded = false;
};

// One recorded operation of a graph. Kernel parameters are copied at record time, as the
// real driver does; copies and memsets keep their addresses (read when the graph runs).
struct Node {
    enum Kind { Kernel, Copy, Set, EventRecord, Host } kind = Kernel;
    // Kernel
    Function* fn = nullptr;
    Dim3 grid{1, 1, 1}, block{1, 1, 1};
    size_t dyn_smem = 0;
    bool cooperative = false;
    // CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION: a captured node keeps it, so a
    // replay is checked as the eager launch is (emu::LaunchOptions::programmatic).
    bool programmatic = false;
    std::vector<std::vector<unsigned char>> params;
    std::vector<bool> param_size_known;  // false: a 4 KiB snapshot (see modules.cpp)
    // Copy: dst <- src, bytes. Set: dst, value of elem_size bytes, count elements.
    void* dst = nullptr;
    const void* src = nullptr;
    size_t bytes = 0;
    unsigned value = 0;
    unsigned elem_size = 1;
    size_t count = 0;
    // EventRecord
    Event* event = nullptr;
    // Host
    CUhostFn host_fn = nullptr;
    void* host_data = nullptr;
};

// What a graph needs to stay valid: shared by a CUgraph and every CUgraphExec made from
// it, so one lifetime problem is reported once.
struct Lifetime {
    std::vector<std::string> problems;  // "buffer 0x... (N bytes) freed", "module ... unloaded"
    bool reported = false;
    unsigned long long id = 0;
};

struct Graph {
    std::vector<Node> nodes;
    std::shared_ptr<Lifetime> life;
};

struct GraphExec {
    std::vector<Node> nodes;
    std::shared_ptr<Lifetime> life;
};

struct Capture {
    Stream* origin = nullptr;
    CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
    std::thread::id thread;
    unsigned long long id = 0;
    bool invalidated = false;
    std::string why;  // what invalidated it
    Graph* graph = nullptr;
};

// ---- Handles ------------------------------------------------------------------------------
Stream* stream_of(CUstream s);  // nullptr for an unknown handle
bool stream_valid(CUstream s);
Event* event_of(CUevent e);
Function* function_of(CUfunction f);

// ---- Capture (capture.cpp) ----------------------------------------------------------------
// The capture `s` records into (nullptr: run the work now). A stream that is not capturing
// itself but implicitly joins a blocking capture (the legacy stream) returns an error
// through *err.
Capture* recording(Stream* s, CUresult* err);
// For calls the real driver calls "potentially unsafe" during capture (synchronous copies,
// allocation, context synchronization): CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and the
// captures that prohibit the call are invalidated; success when no capture objects.
CUresult check_unsafe_call(const char* what);
void invalidate(Capture* c, const std::string& why);
// Every stream and event that refers to c forgets it (the capture ended).
void detach_streams(Capture* c);
// The origin stream of c was destroyed: c ends without a graph.
void abandon_capture(Capture* c);
// Appends a node to the capture's graph.
void record(Capture* c, Node n);
// Runs one node (a graph replay or eager work); a kernel fault becomes sticky.
CUresult run_node(const Node& n);
// A buffer [p, p+n) or a module is going away: every live graph that points into it
// records the problem.
void buffer_released(const void* p, size_t n, const char* how);
// A context reset frees every live device allocation; returns {allocations, bytes}.
std::pair<size_t, size_t> release_all_device_memory();
void module_released(Module* m);

// ---- Work (memory.cpp, modules.cpp) -------------------------------------------------------
CUresult do_copy(void* dst, const void* src, size_t bytes, CUmemorytype dst_kind,
                 CUmemorytype src_kind);
CUresult do_set(void* dst, unsigned value, unsigned elem_size, size_t count);
// Runs a kernel node; params: the caller's (an eager launch), or nullptr for the node's copies.
CUresult do_kernel(const Node& n, void** params = nullptr);
// Validates a launch exactly as cuLaunchKernel does; success or CUDA_ERROR_INVALID_VALUE
// (with the reason on stderr).
CUresult check_launch(const Function& f, Dim3 grid, Dim3 block, size_t dyn_smem);

}  // namespace emu::drv

#endif
