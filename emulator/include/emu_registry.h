/*
 * emu_registry.h: pieces of the registry that emulator/build.sh generates for a kernels
 * library: a trampoline per kernel signature (unpacks cuLaunchKernel's `void** params`),
 * and the entry macro. Trampolines are not instrumented: the parameter buffer is the
 * driver's host memory, which kernel code itself may not touch.
 */
#ifndef TACHYON_EMU_REGISTRY_H
#define TACHYON_EMU_REGISTRY_H

#include <type_traits>
#include <utility>

#include "runtime.h"

template <class... A, size_t... I>
__attribute__((no_sanitize_address)) inline void emu_call(void (*f)(A...), void** p,
                                                          std::index_sequence<I...>) {
    f(*static_cast<typename std::remove_cv<typename std::remove_reference<A>::type>::type*>(p[I])...);
}

template <class... A>
__attribute__((no_sanitize_address)) void emu_trampoline(void* fn, void** p) {
    emu_call(reinterpret_cast<void (*)(A...)>(fn), p, std::index_sequence_for<A...>{});
}

template <class... A>
constexpr emu::Trampoline emu_trampoline_for(void (*)(A...)) {
    return &emu_trampoline<A...>;
}

template <class... A>
constexpr unsigned emu_nparams(void (*)(A...)) {
    return sizeof...(A);
}

// sizeof of each parameter type as the kernel receives it (by value); one spare entry so a
// kernel without parameters still has an array.
template <class... A>
struct emu_param_sizes_of {
    static constexpr unsigned v[sizeof...(A) + 1] = {
        unsigned(sizeof(typename std::remove_cv<typename std::remove_reference<A>::type>::type))..., 0u};
};

template <class... A>
constexpr const unsigned* emu_param_sizes(void (*)(A...)) {
    return emu_param_sizes_of<A...>::v;
}

#define EMU_KERNEL(name, bounds)                                                                 \
    emu::KernelInfo {                                                                            \
        #name, reinterpret_cast<void*>(&name), emu_trampoline_for(&name), (unsigned)(bounds), 0, \
            0, emu_nparams(&name), emu_param_sizes(&name)                                        \
    }

#endif  // TACHYON_EMU_REGISTRY_H
