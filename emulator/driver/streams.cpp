/*
 * streams.cpp: streams and events. All work is done when it is issued, so a stream is only
 * its flags and the capture it records into; an event is the host time it was recorded at.
 */
#include <set>

#include "internal.h"

using namespace emu::drv;

namespace {

Stream g_legacy = [] {
    Stream s;
    s.legacy = true;
    return s;
}();
Stream g_per_thread;  // CU_STREAM_PER_THREAD: a blocking stream of its own
std::set<Stream*> g_streams;
std::set<Event*> g_events;

}  // namespace

namespace emu::drv {

Stream* stream_of(CUstream s) {
    if (s == nullptr || s == CU_STREAM_LEGACY) return &g_legacy;
    if (s == CU_STREAM_PER_THREAD) return &g_per_thread;
    auto* p = reinterpret_cast<Stream*>(s);
    return g_streams.count(p) != 0 ? p : nullptr;
}

bool stream_valid(CUstream s) { return stream_of(s) != nullptr; }

void detach_streams(Capture* c) {
    for (Stream* s : g_streams)
        if (s->capture == c) s->capture = nullptr;
    if (g_per_thread.capture == c) g_per_thread.capture = nullptr;
    for (Event* e : g_events)
        if (e->captured_in == c) e->captured_in = nullptr;
}

Event* event_of(CUevent e) {
    auto* p = reinterpret_cast<Event*>(e);
    return g_events.count(p) != 0 ? p : nullptr;
}

}  // namespace emu::drv

// ---- Streams -----------------------------------------------------------------------------------

EMU_API CUresult cuStreamCreateWithPriority(CUstream* ph, unsigned int flags, int priority) {
    if (ph == nullptr) return CUDA_ERROR_INVALID_VALUE;
    if ((flags & ~static_cast<unsigned>(CU_STREAM_NON_BLOCKING)) != 0) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    auto* s = new Stream;
    s->flags = flags;
    s->priority = priority;
    g_streams.insert(s);
    *ph = reinterpret_cast<CUstream>(s);
    return CUDA_SUCCESS;
}

EMU_API CUresult cuStreamCreate(CUstream* ph, unsigned int flags) {
    return cuStreamCreateWithPriority(ph, flags, 0);
}

EMU_API CUresult cuStreamDestroy_v2(CUstream hs) {
    EMU_LOCK;
    if (hs == nullptr || hs == CU_STREAM_LEGACY || hs == CU_STREAM_PER_THREAD)
        return CUDA_ERROR_INVALID_HANDLE;
    Stream* s = stream_of(hs);
    if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    if (s->capture != nullptr) {
        invalidate(s->capture, "a capturing stream was destroyed");
        if (s->capture->origin == s)
            abandon_capture(s->capture);
        else
            s->capture = nullptr;
    }
    g_streams.erase(s);
    delete s;
    return CUDA_SUCCESS;
}

EMU_API CUresult cuStreamSynchronize(CUstream hs) {
    EMU_LOCK;
    Stream* s = stream_of(hs);
    if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    if (s->capture != nullptr) {
        // Waiting for a stream whose work is being recorded can never finish.
        invalidate(s->capture, "cuStreamSynchronize on the capturing stream");
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    if (s->legacy)
        if (CUresult e = check_unsafe_call("cuStreamSynchronize(legacy stream)")) return e;
    return ready();
}

EMU_API CUresult cuStreamQuery(CUstream hs) {
    EMU_LOCK;
    Stream* s = stream_of(hs);
    if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    if (s->capture != nullptr) {
        invalidate(s->capture, "cuStreamQuery on the capturing stream");
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    return ready();
}

EMU_API CUresult cuStreamGetFlags(CUstream hs, unsigned int* flags) {
    if (flags == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    Stream* s = stream_of(hs);
    if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    *flags = s->flags;
    return CUDA_SUCCESS;
}

EMU_API CUresult cuStreamGetPriority(CUstream hs, int* priority) {
    if (priority == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    Stream* s = stream_of(hs);
    if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    *priority = s->priority;
    return CUDA_SUCCESS;
}

EMU_API CUresult cuStreamGetCtx(CUstream hs, CUcontext* pctx) {
    if (pctx == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    if (stream_of(hs) == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    CUdevice dev = 0;
    return cuDevicePrimaryCtxRetain(pctx, dev) == CUDA_SUCCESS ? cuDevicePrimaryCtxRelease_v2(dev)
                                                              : CUDA_ERROR_INVALID_CONTEXT;
}

EMU_API CUresult cuStreamWaitEvent(CUstream hs, CUevent he, unsigned int flags) {
    (void)flags;
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    Stream* s = stream_of(hs);
    Event* ev = event_of(he);
    if (s == nullptr || ev == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    Capture* c = ev->captured_in;
    if (c == nullptr) return CUDA_SUCCESS;  // the recorded work is done already
    if (s->capture == nullptr) {
        // Waiting on an event recorded in a capture pulls this stream into that capture
        // (the fork of a fork/join): its work is recorded from now on.
        s->capture = c;
        return CUDA_SUCCESS;
    }
    if (s->capture != c) return CUDA_ERROR_STREAM_CAPTURE_MERGE;
    return CUDA_SUCCESS;
}

EMU_API CUresult cuLaunchHostFunc(CUstream hs, CUhostFn fn, void* data) {
    if (fn == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    Stream* s = stream_of(hs);
    if (s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    CUresult err = CUDA_SUCCESS;
    Capture* c = recording(s, &err);
    if (err != CUDA_SUCCESS) return err;
    if (c != nullptr) {
        Node n;
        n.kind = Node::Host;
        n.host_fn = fn;
        n.host_data = data;
        record(c, n);
        return CUDA_SUCCESS;
    }
    fn(data);
    return CUDA_SUCCESS;
}

// ---- Events ------------------------------------------------------------------------------------

EMU_API CUresult cuEventCreate(CUevent* ph, unsigned int flags) {
    if (ph == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    auto* ev = new Event;
    ev->flags = flags;
    g_events.insert(ev);
    *ph = reinterpret_cast<CUevent>(ev);
    return CUDA_SUCCESS;
}

EMU_API CUresult cuEventDestroy_v2(CUevent he) {
    EMU_LOCK;
    Event* ev = event_of(he);
    if (ev == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    g_events.erase(ev);
    // A graph may still name it in an event-record node; keep the object (tiny) so that a
    // replay never touches freed memory, and let the node see it is gone.
    ev->destroyed = true;
    return CUDA_SUCCESS;
}

static CUresult event_record(CUevent he, CUstream hs) {
    EMU_LOCK;
    if (CUresult e = ready()) return e;
    Event* ev = event_of(he);
    Stream* s = stream_of(hs);
    if (ev == nullptr || s == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    CUresult err = CUDA_SUCCESS;
    Capture* c = recording(s, &err);
    if (err != CUDA_SUCCESS) return err;
    if (c != nullptr) {
        Node n;
        n.kind = Node::EventRecord;
        n.event = ev;
        record(c, n);
        ev->captured_in = c;
        return CUDA_SUCCESS;
    }
    ev->captured_in = nullptr;
    ev->recorded = true;
    ev->when = std::chrono::steady_clock::now();
    return CUDA_SUCCESS;
}

EMU_API CUresult cuEventRecord(CUevent he, CUstream hs) { return event_record(he, hs); }
EMU_API CUresult cuEventRecordWithFlags(CUevent he, CUstream hs, unsigned int) {
    return event_record(he, hs);
}

EMU_API CUresult cuEventSynchronize(CUevent he) {
    EMU_LOCK;
    Event* ev = event_of(he);
    if (ev == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    if (ev->captured_in != nullptr) return CUDA_ERROR_CAPTURED_EVENT;
    return ready();
}

EMU_API CUresult cuEventQuery(CUevent he) {
    EMU_LOCK;
    Event* ev = event_of(he);
    if (ev == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    if (ev->captured_in != nullptr) return CUDA_ERROR_CAPTURED_EVENT;
    return ready();
}

static CUresult elapsed(float* ms, CUevent hstart, CUevent hend) {
    if (ms == nullptr) return CUDA_ERROR_INVALID_VALUE;
    EMU_LOCK;
    Event* a = event_of(hstart);
    Event* b = event_of(hend);
    if (a == nullptr || b == nullptr) return CUDA_ERROR_INVALID_HANDLE;
    if (a->captured_in != nullptr || b->captured_in != nullptr) return CUDA_ERROR_CAPTURED_EVENT;
    if (((a->flags | b->flags) & CU_EVENT_DISABLE_TIMING) != 0) return CUDA_ERROR_INVALID_HANDLE;
    if (!a->recorded || !b->recorded) return CUDA_ERROR_INVALID_HANDLE;
    if (CUresult e = ready()) return e;
    // Host time between the two records: the emulator's own speed, not a GPU's.
    *ms = std::chrono::duration<float, std::milli>(b->when - a->when).count();
    return CUDA_SUCCESS;
}

EMU_API CUresult cuEventElapsedTime_v2(float* ms, CUevent a, CUevent b) { return elapsed(ms, a, b); }
#undef cuEventElapsedTime
EMU_API CUresult cuEventElapsedTime(float* ms, CUevent a, CUevent b) { return elapsed(ms, a, b); }
