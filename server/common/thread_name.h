// Thread names: what `top -H`, `ps -L`, perf and gdb show for the server's own threads.
#pragma once

#include <pthread.h>

#include <string>

namespace careserve {

// Names the calling thread. Linux keeps 15 characters; longer names are cut, not refused.
// Threads it starts afterwards, OpenMP's team threads included, inherit the name.
inline void NameThisThread(const std::string& name) {
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
}

}  // namespace careserve
