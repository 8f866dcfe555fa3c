# emu.mk: the emulated GPU's build rules, driven by emulator/build.sh (which passes ROOT,
# OUT and, for a kernels library, KSRC, KLIB, KGEN and STAMP). Incremental: objects keep
# their header dependencies (-MMD).
CXX ?= g++
CUDA_INC ?= $(ROOT)/.toolchain/cuda/nvidia/cu13/include
EMU := $(ROOT)/emulator
COMMON := -std=c++17 -g -fPIC -pthread -Wall -Wno-unused-function -MMD -MP

# ---- libcuda.so.1: runtime + driver --------------------------------------------------------
RT_SRCS := $(wildcard $(EMU)/runtime/*.cpp) $(wildcard $(EMU)/driver/*.cpp)
RT_OBJS := $(patsubst $(EMU)/%.cpp,$(OUT)/obj/%.o,$(RT_SRCS))
RT_FLAGS := $(COMMON) -O2 -fno-omit-frame-pointer -I$(CUDA_INC) -I$(EMU)/runtime -I$(EMU)/include

$(OUT)/obj/%.o: $(EMU)/%.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(RT_FLAGS) -c $< -o $@

$(OUT)/libcuda.so.1: $(RT_OBJS)
	$(CXX) -shared -Wl,-soname,libcuda.so.1 -o $@ $(RT_OBJS) -pthread -ldl
	ln -sf libcuda.so.1 $(OUT)/libcuda.so

$(OUT)/emu-stamp: $(EMU)/runtime/stamp.cpp $(EMU)/runtime/runtime.h
	$(CXX) -std=c++17 -O1 -DEMU_STAMP_MAIN -I$(EMU)/runtime $< -o $@

runtime: $(OUT)/libcuda.so.1 $(OUT)/emu-stamp

# ---- A kernels library ----------------------------------------------------------------------
# Kernel code: every load and store calls the runtime's checks (__asan_*_noabort); passes
# that would change the width or alignment of accesses as written (store merging, the
# bswap/load-merging pass, vectorizers) are off, so a check sees the access the GPU would.
KFLAGS := $(COMMON) -x c++ -O2 -fno-plt -fno-omit-frame-pointer -fno-strict-aliasing -ffp-contract=off \
  -fno-store-merging -fno-expensive-optimizations -fno-tree-vectorize -fno-tree-slp-vectorize \
  -fno-tree-loop-distribute-patterns \
  -fsanitize=kernel-address --param asan-instrumentation-with-call-threshold=0 \
  --param asan-stack=0 --param asan-globals=0 \
  -include $(EMU)/include/cuda_emu.h -I$(CUDA_INC) -I$(EMU)/include -I$(EMU)/runtime -I$(KSRC) \
  -Wno-unused-variable -Wno-unused-but-set-variable -Wno-class-memaccess -Wno-unknown-pragmas
K_WRAPS := $(wildcard $(KGEN)/k_*.cpp)
K_OBJS := $(patsubst $(KGEN)/%.cpp,$(KGEN)/%.o,$(K_WRAPS))

$(KGEN)/k_%.o: $(KGEN)/k_%.cpp
	$(CXX) $(KFLAGS) -c $< -o $@

$(KGEN)/registry.cpp: $(K_OBJS) $(EMU)/tools/gen_registry.py FORCE
	python3 $(EMU)/tools/gen_registry.py registry $(KGEN) $(STAMP) $(K_OBJS)

$(KGEN)/registry.o: $(KGEN)/registry.cpp
	$(CXX) $(COMMON) -O1 -I$(EMU)/runtime -I$(EMU)/include -c $< -o $@

$(KLIB): $(K_OBJS) $(KGEN)/registry.o $(OUT)/libcuda.so.1
	$(CXX) -shared -o $@ $(K_OBJS) $(KGEN)/registry.o -L$(OUT) -l:libcuda.so.1 -Wl,-rpath,'$$ORIGIN' -pthread

kernels: $(KLIB)

# ---- The runtime's self test -----------------------------------------------------------------
$(OUT)/runtime_selftest: $(EMU)/tests/runtime_selftest.cpp $(OUT)/libcuda.so.1
	$(CXX) $(COMMON) -O1 -I$(EMU)/runtime -I$(EMU)/include -I$(ROOT)/kernels -I$(CUDA_INC) $< -o $@ \
	  -L$(OUT) -l:libcuda.so.1 -Wl,-rpath,'$$ORIGIN' -ldl

selftest: $(OUT)/runtime_selftest

FORCE:
.PHONY: runtime kernels selftest FORCE

-include $(RT_OBJS:.o=.d) $(K_OBJS:.o=.d) $(KGEN)/registry.d
