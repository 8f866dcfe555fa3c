/*
 * stamp.cpp: emu::source_stamp, the hash of a kernel source directory (runtime.h says
 * exactly what goes in). Built into libcuda.so.1 and, with EMU_STAMP_MAIN, into the small
 * tool emulator/build.sh uses to embed the same value in a kernels library.
 */
#include <dirent.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include "runtime.h"

namespace emu {

static bool wanted(const std::string& n) {
    auto ends = [&](const char* s) {
        const size_t k = std::char_traits<char>::length(s);
        return n.size() >= k && n.compare(n.size() - k, k, s) == 0;
    };
    return ends(".cu") || ends(".cuh") || ends(".h");
}

std::string source_stamp(const std::string& dir, std::string* err) {
    DIR* d = opendir(dir.c_str());
    if (d == nullptr) {
        if (err) *err = "cannot read directory " + dir;
        return "";
    }
    std::vector<std::string> names;
    while (dirent* e = readdir(d)) {
        const std::string n = e->d_name;
        if (wanted(n)) names.push_back(n);
    }
    closedir(d);
    std::sort(names.begin(), names.end());
    uint64_t h = 0xcbf29ce484222325ull;
    auto mix = [&](const char* p, size_t n) {
        for (size_t i = 0; i < n; ++i) {
            h ^= static_cast<unsigned char>(p[i]);
            h *= 0x100000001b3ull;
        }
    };
    for (const std::string& n : names) {
        std::ifstream f(dir + "/" + n, std::ios::binary);
        if (!f) continue;  // not a regular readable file
        std::ostringstream ss;
        ss << f.rdbuf();
        const std::string body = ss.str();
        mix(n.c_str(), n.size() + 1);
        mix(body.data(), body.size());
        mix("", 1);
    }
    char out[17];
    snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(h));
    return out;
}

}  // namespace emu

#ifdef EMU_STAMP_MAIN
int main(int argc, char** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    std::string err;
    const std::string s = emu::source_stamp(argv[1], &err);
    if (s.empty()) {
        fprintf(stderr, "%s\n", err.c_str());
        return 1;
    }
    printf("%s\n", s.c_str());
    return 0;
}
#endif
