/*
 * stub_report.h: what a generated NOT_SUPPORTED stub calls (stubs_generated.cpp has no
 * access to cuda.h: its variadic stubs would clash with the real prototypes).
 */
#ifndef TACHYON_EMU_DRIVER_STUB_REPORT_H
#define TACHYON_EMU_DRIVER_STUB_REPORT_H

// Says once per symbol on stderr that `name` is not emulated; returns
// CUDA_ERROR_NOT_SUPPORTED (801).
extern "C" int emu_driver_not_supported(const char* name);

#endif
