/*
 * capture.cpp: stream capture and CUDA graphs.
 *
 * During capture, work issued to the capturing stream (and to streams that joined it by
 * waiting on one of its events) is recorded as nodes instead of run; kernel parameters are
 * copied when recorded, as the real driver does. A graph is its nodes in record order, which
 * is a valid order for every dependency the capture could express; cuGraphLaunch runs them.
 *
 * The real driver refuses some calls during capture, with these codes, and so does this:
 * - synchronizing the capturing stream, querying it: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
 * - "potentially unsafe" calls (synchronous copies and memsets, cuMemAlloc / cuMemFree,
 *   cuCtxSynchronize) from a thread the capture mode covers: the same code;
 * - work on the legacy stream while a blocking stream captures:
 *   CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
 * - capture on the legacy stream: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED.
 * Each refusal invalidates the capture: cuStreamEndCapture then returns
 * CUDA_ERROR_STREAM_CAPTURE_INVALIDATED and no graph.
 *
 * Lifetimes: freeing a buffer that a live graph points into, or unloading a module whose
 * kernels a live graph launches, is recorded on the graph. Launching such a graph is refused
 * (CUDA_ERROR_ILLEGAL_ADDRESS, not sticky: nothing ran) and destroying it reports the
 * problem on stderr once: a graph must be destroyed before what it points into.
 */
#include <cstring>
#include <set>

#include "internal.h"

using namespace emu::drv;

namespace {

std::set<Capture*> g_captures;  // active (begun, not ended)
std::set<Graph*> g_graphs;
std::set<GraphExec*> g_execs;
unsigned long long g_next_id = 1;
thread_local CUstreamCaptureMode t_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;

std::string hex(uintptr_t p) {
    char buf[32];
    snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(p));
    return buf;
}

bool overlaps(uintptr_t a, size_t an, uintptr_t b, size_t bn) {
    return a < b + bn && b < a + (an == 0 ? 1 : an);
}

// Whether `n` points into [p, p+len): its copy / memset addresses, and every 8-byte
// aligned word of its kernel parameters whose size is known (device addresses in the
// parameter structs). A non-pointer word that happens to hold such an address is
// vanishingly unlikely: arena addresses are large and 256-byte aligned at each start.
bool points_into(const Node& n, uintptr_t p, size_t len) {
    switch (n.kind) {
        case Node::Copy:
            return overlaps(reinterpret_cast<uintptr_t>(n.dst), n.bytes, p, len) ||
                   overlaps(reinterpret_cast<uintptr_t>(n.src), n.bytes, p, len);
        case Node::Set:
            return overlaps(reinterpret_cast<uintptr_t>(n.dst), n.count * n.elem_size, p, len);
        case Node::Kernel:
            for (size_t i = 0; i < n.params.size(); ++i) {
                if (!n.param_size_known[i]) continue;
                const auto& blob = n.params[i];
                for (size_t off = 0; off + 8 <= blob.size(); off += 8) {
                    uint64_t v;
                    memcpy(&v, blob.data() + off, 8);
                    if (v >= p && v < p + (len == 0 ? 1 : len)) return true;
                }
            }
            return false;
        default:
            return false;
    }
}

void note(const std::vector<Node>& nodes, Lifetime& life, uintptr_t p, size_t len,
          const char* how) {
    for (const Node& n : nodes)
        if (points_into(n, p, len)) {
            // A graph and its executable share one lifetime: say each buffer once.
            std::string what = "buffer " + hex(p) + " (" + std::to_string(len) +
                               " bytes) released by " + how;
            for (const auto& q : life.problems)
                if (q == what) return;
            life.problems.push_back(std::move(what));
            return;
        }
}

void note_module(const std::vector<Node>& nodes, Lifetime& life, Module* m) {
    for (const Node& n : nodes)
        if (n.kind == Node::Kernel && n.fn != nullptr && n.fn->module == m) {
            std::string what =
                "module " + m->path + " unloaded (kernel " + std::string(n.fn->info->name) + ")";
            for (const auto& q : life.problems)
                if (q == what) return;
            life.problems.push_back(std::move(what));
            return;
        }
}

std::string problems_text(const Lifetime& life) {
    std::string s;
    for (const auto& p : life.problems) s += (s.empty() ? "" : "; ") + p;
    return s;
}

void report_destroyed(Lifetime& life) {
    if (life.problems.empty() || life.reported) return;
    life.reported = true;
    say("CUDA graph " + std::to_string(life.id) +
        " outlived the buffer/module it points into: " + problems_text(life) +
        ". Destroy a graph before freeing the buffers and unloading the modules it uses.");
}

}  // namespace

namespace emu::drv {

Capture* recording(Stream* s, CUresult* err) {
    *err = CUDA_SUCCESS;
    if (s->capture != nullptr) {
        if (s->capture->invalidated) {
            *err = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
            return nullptr;
        }
        return s->capture;
    }
    if (s->legacy) {
        // The legacy stream waits for every blocking stream: work here would depend on
        // a blocking stream's capture.
        for (Capture* c : g_captures)
            if (c->origin != nullptr && (c->origin->flags & CU_STREAM_NON_BLOCKING) == 0) {
                invalidate(c, "work on the legacy stream while a blocking stream captures");
                *err = CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
                return nullptr;
            }
    }
    return nullptr;
}

CUresult check_unsafe_call(const char* what) {
    if (t_mode == CU_STREAM_CAPTURE_MODE_RELAXED) return CUDA_SUCCESS;
    const auto me = std::this_thread::get_id();
    CUresult result = CUDA_SUCCESS;
    for (Capture* c : g_captures) {
        bool mine = c->thread == me && c->mode != CU_STREAM_CAPTURE_MODE_RELAXED;
        bool global = t_mode == CU_STREAM_CAPTURE_MODE_GLOBAL &&
                      c->mode == CU_STREAM_CAPTURE_MODE_GLOBAL;
        if (mine || global) {
            invalidate(c, std::string(what) + " during capture");
            result = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
        }
    }
    return result;
}

void invalidate(Capture* c, const std::string& why) {
    if (c->invalidated) return;
    c->invalidated = true;
    c->why = why;
    say("stream capture " + std::to_string(c->id) + " invalidated: " + why);
}

void abandon_capture(Capture* c) {
    g_captures.erase(c);
    detach_streams(c);
    delete c->graph;
    delete c;
}

void record(Capture* c, Node n) { c->graph->nodes.push_back(std::move(n)); }

CUresult run_node(const Node& n) {
    switch (n.kind) {
        case Node::Kernel:
            return do_kernel(n);
        case Node::Copy: {
            void* base = nullptr;
            size_t size = 0;
            CUmemorytype dk = emu::dev_lookup(n.dst, &base, &size) ? CU_MEMORYTYPE_DEVICE
                                                                   : CU_MEMORYTYPE_HOST;
            CUmemorytype sk = emu::dev_lookup(n.src, &base, &size) ? CU_MEMORYTYPE_DEVICE
                                                                   : CU_MEMORYTYPE_HOST;
            return do_copy(n.dst, n.src, n.bytes, dk, sk);
        }
        case Node::Set:
            return do_set(n.dst, n.value, n.elem_size, n.count);
        case Node::EventRecord:
            if (!n.event->destroyed) {
                n.event->recorded = true;
                n.event->captured_in = nullptr;
                n.event->when = std::chrono::steady_clock::now();
            }
            return CUDA_SUCCESS;
        case Node::Host:
            emu::pdl_serialize();
            n.host_fn(n.host_data);
            return CUDA_SUCCESS;
    }
    return CUDA_SUCCESS;
}

void buffer_released(const void* ptr, size_t n, const char* how) {
    auto p = reinterpret_cast<uintptr_t>(ptr);
    for (Graph* g : g_graphs) note(g->nodes, *g->life, p, n, how);
    for (GraphExec* x : g_execs) note(x->nodes, *x->life, p, n, how);
    for (Capture* c : g_captures) note(c->graph->nodes, *c->graph->life, p, n, how);
}

void module_released(Module* m) {
    for (Graph* g : g_graphs) note_module(g->nodes, *g->life, m);
    for (GraphExec* x : g_execs) note_module(x->nodes, *x->life, m);
    for (Capture* c : g_captures) note_module(c->graph->nodes, *c->graph->life, m);
}

}  // namespace emu::drv

// ---- Capture ----------------------------------------------------------------------------------

EMU_API CUresult cuStreamBeginCapture_v2(CUstream hs, CUstreamCaptureMode mode) {
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    Stream* s = stream_of(hs);
    if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    if (mode != CU_STREAM_CAPTURE_MODE_GLOBAL && mode != CU_STREAM_CAPTURE_MODE_THREAD_LOCAL &&
        mode != CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_ERROR_INVALID_VALUE;
    if (s->legacy) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (s->capture != nullptr) return CUDA_ERROR_ILLEGAL_STATE;
    auto* c = new Capture;
    c->origin = s;
    c->mode = mode;
    c->thread = std::this_thread::get_id();
    c->id = g_next_id++;
    c->graph = new Graph;
    c->graph->life = std::make_shared<Lifetime>();
    c->graph->life->id = c->id;
    s->capture = c;
    g_captures.insert(c);
    return CUDA_SUCCESS;
}

#undef cuStreamBeginCapture
EMU_API CUresult cuStreamBeginCapture(CUstream hs, CUstreamCaptureMode mode) {
    return cuStreamBeginCapture_v2(hs, mode);
}

EMU_API CUresult cuStreamEndCapture(CUstream hs, CUgraph* phGraph) {
    if (phGraph == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    Stream* s = stream_of(hs);
    if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    Capture* c = s->capture;
    if (c == nullptr) return CUDA_ERROR_ILLEGAL_STATE;
    if (c->origin != s) return CUDA_ERROR_STREAM_CAPTURE_UNMATCHED;
    if (c->mode != CU_STREAM_CAPTURE_MODE_RELAXED && c->thread != std::this_thread::get_id())
        return CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD;
    g_captures.erase(c);
    detach_streams(c);
    *phGraph = nullptr;
    CUresult result = CUDA_SUCCESS;
    if (c->invalidated) {
        result = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        delete c->graph;
    } else {
        g_graphs.insert(c->graph);
        *phGraph = reinterpret_cast<CUgraph>(c->graph);
    }
    delete c;
    return result;
}

EMU_API CUresult cuStreamIsCapturing(CUstream hs, CUstreamCaptureStatus* status) {
    if (status == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    Stream* s = stream_of(hs);
    if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    if (s->legacy) {
        for (Capture* c : g_captures)
            if (c->origin != nullptr && (c->origin->flags & CU_STREAM_NON_BLOCKING) == 0)
                return CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
    }
    if (s->capture == nullptr)
        *status = CU_STREAM_CAPTURE_STATUS_NONE;
    else
        *status = s->capture->invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED
                                          : CU_STREAM_CAPTURE_STATUS_ACTIVE;
    return CUDA_SUCCESS;
}

static CUresult capture_info(CUstream hs, CUstreamCaptureStatus* status, cuuint64_t* id,
                             CUgraph* graph, const CUgraphNode** deps, size_t* ndeps) {
    EMU_LOCK;
    Stream* s = stream_of(hs);
    if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    Capture* c = s->capture;
    if (status != nullptr)
        *status = c == nullptr     ? CU_STREAM_CAPTURE_STATUS_NONE
                  : c->invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED
                                   : CU_STREAM_CAPTURE_STATUS_ACTIVE;
    if (id != nullptr && c != nullptr) *id = c->id;
    if (graph != nullptr) *graph = c == nullptr ? nullptr : reinterpret_cast<CUgraph>(c->graph);
    if (deps != nullptr) *deps = nullptr;
    if (ndeps != nullptr) *ndeps = 0;
    return CUDA_SUCCESS;
}

#undef cuStreamGetCaptureInfo
EMU_API CUresult cuStreamGetCaptureInfo(CUstream hs, CUstreamCaptureStatus* status,
                                        cuuint64_t* id) {
    return capture_info(hs, status, id, nullptr, nullptr, nullptr);
}
EMU_API CUresult cuStreamGetCaptureInfo_v2(CUstream hs, CUstreamCaptureStatus* status,
                                           cuuint64_t* id, CUgraph* graph,
                                           const CUgraphNode** deps, size_t* ndeps) {
    return capture_info(hs, status, id, graph, deps, ndeps);
}
EMU_API CUresult cuStreamGetCaptureInfo_v3(CUstream hs, CUstreamCaptureStatus* status,
                                           cuuint64_t* id, CUgraph* graph,
                                           const CUgraphNode** deps,
                                           const CUgraphEdgeData** edges, size_t* ndeps) {
    if (edges != nullptr) *edges = nullptr;
    return capture_info(hs, status, id, graph, deps, ndeps);
}

EMU_API CUresult cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode* mode) {
    if (mode == nullptr) return CUDA_ERROR_INVALID_VALUE;
    CUstreamCaptureMode old = t_mode;
    t_mode = *mode;
    *mode = old;
    return CUDA_SUCCESS;
}

// ---- Graphs -------------------------------------------------------------------------------------

EMU_API CUresult cuGraphCreate(CUgraph* ph, unsigned int flags) {
    if (ph == nullptr || flags != 0) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    auto* g = new Graph;
    g->life = std::make_shared<Lifetime>();
    g->life->id = g_next_id++;
    g_graphs.insert(g);
    *ph = reinterpret_cast<CUgraph>(g);
    return CUDA_SUCCESS;
}

static CUresult instantiate(CUgraphExec* ph, CUgraph hg, unsigned long long flags) {
    if (ph == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    auto* g = reinterpret_cast<Graph*>(hg);
    if (g_graphs.count(g) == 0) return CUDA_ERROR_INVALID_VALUE;
    const unsigned long long known = CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH |
                                     CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD |
                                     CUDA_GRAPH_INSTANTIATE_FLAG_DEVICE_LAUNCH |
                                     CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY;
    if ((flags & ~known) != 0) return CUDA_ERROR_INVALID_VALUE;
    if ((flags & CUDA_GRAPH_INSTANTIATE_FLAG_DEVICE_LAUNCH) != 0 &&
        (flags & CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH) != 0)
        return CUDA_ERROR_INVALID_VALUE;
    auto* x = new GraphExec;
    x->nodes = g->nodes;
    x->life = g->life;
    g_execs.insert(x);
    *ph = reinterpret_cast<CUgraphExec>(x);
    return CUDA_SUCCESS;
}

EMU_API CUresult cuGraphInstantiateWithFlags(CUgraphExec* ph, CUgraph g, unsigned long long f) {
    return instantiate(ph, g, f);
}

EMU_API CUresult cuGraphInstantiate_v2(CUgraphExec* ph, CUgraph g, CUgraphNode* err_node,
                                       char* log, size_t log_size) {
    if (err_node != nullptr) *err_node = nullptr;
    if (log != nullptr && log_size > 0) log[0] = '\0';
    return instantiate(ph, g, 0);
}

EMU_API CUresult cuGraphInstantiateWithParams(CUgraphExec* ph, CUgraph g,
                                              CUDA_GRAPH_INSTANTIATE_PARAMS* params) {
    CUresult r = instantiate(ph, g, params != nullptr ? params->flags : 0);
    if (params != nullptr) {
        params->result_out = r == CUDA_SUCCESS ? CUDA_GRAPH_INSTANTIATE_SUCCESS
                                               : CUDA_GRAPH_INSTANTIATE_ERROR;
        params->hErrNode_out = nullptr;
    }
    return r;
}

static GraphExec* exec_of(CUgraphExec h) {
    auto* x = reinterpret_cast<GraphExec*>(h);
    return g_execs.count(x) != 0 ? x : nullptr;
}

EMU_API CUresult cuGraphUpload(CUgraphExec hx, CUstream hs) {
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    if (exec_of(hx) == nullptr || stream_of(hs) == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    return CUDA_SUCCESS;
}

EMU_API CUresult cuGraphLaunch(CUgraphExec hx, CUstream hs) {
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    GraphExec* x = exec_of(hx);
    Stream* s = stream_of(hs);
    if (x == nullptr || s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    if (!x->life->problems.empty()) {
        say("CUDA graph " + std::to_string(x->life->id) +
            " outlived the buffer/module it points into: " + problems_text(*x->life) +
            ". Launch refused (a real GPU would run it on freed memory).");
        x->life->reported = true;
        return CUDA_ERROR_ILLEGAL_ADDRESS;
    }
    CUresult err = CUDA_SUCCESS;
    Capture* c = recording(s, &err);
    if (err != CUDA_SUCCESS) return err;
    if (c != nullptr) {  // a graph launched into a capture becomes part of it
        for (const Node& n : x->nodes) record(c, n);
        return CUDA_SUCCESS;
    }
    // A graph launch starts once the stream's earlier work is done: its first kernel never
    // overlaps a kernel before the graph.
    emu::pdl_serialize();
    for (const Node& n : x->nodes)
        if (CUresult e = run_node(n)) return e;
    return CUDA_SUCCESS;
}

EMU_API CUresult cuGraphExecDestroy(CUgraphExec hx) {
    EMU_LOCK;
    GraphExec* x = exec_of(hx);
    if (x == nullptr) return CUDA_ERROR_INVALID_VALUE;
    report_destroyed(*x->life);
    g_execs.erase(x);
    delete x;
    return CUDA_SUCCESS;
}

EMU_API CUresult cuGraphDestroy(CUgraph hg) {
    EMU_LOCK;
    auto* g = reinterpret_cast<Graph*>(hg);
    if (g_graphs.count(g) == 0) return CUDA_ERROR_INVALID_VALUE;
    report_destroyed(*g->life);
    g_graphs.erase(g);
    delete g;
    return CUDA_SUCCESS;
}

EMU_API CUresult cuGraphGetNodes(CUgraph hg, CUgraphNode* nodes, size_t* count) {
    if (count == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    auto* g = reinterpret_cast<Graph*>(hg);
    if (g_graphs.count(g) == 0) return CUDA_ERROR_INVALID_VALUE;
    if (nodes == nullptr) {
        *count = g->nodes.size();
        return CUDA_SUCCESS;
    }
    // Node handles are not emulated beyond counting.
    return CUDA_ERROR_NOT_SUPPORTED;
}
