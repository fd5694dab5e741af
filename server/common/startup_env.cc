#include "server/common/startup_env.h"

#include <stdlib.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace careserve {

bool ReexecWith(char** argv, const std::vector<StartupVariable>& variables) {
  bool changed = false;
  for (const StartupVariable& v : variables) {
    const char* current = getenv(v.name.c_str());
    if (current != nullptr && (v.keep_existing || v.value == current)) continue;
    setenv(v.name.c_str(), v.value.c_str(), /*overwrite=*/1);
    changed = true;
  }
  if (!changed) return true;
  // The program's own path rather than /proc/self/exe: the kernel names the process after
  // the file it executes, and `top`, `pidof care-server` and process exporters would
  // otherwise see "exe".
  char path[4096];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n > 0) {
    path[n] = '\0';
    execv(path, argv);  // fails if the file was replaced or removed since: then as below
  }
  execv("/proc/self/exe", argv);
  return false;  // exec failed: going on without them
}

StartupVariable OpenMpSpinCount() { return {"GOMP_SPINCOUNT", "2000", /*keep_existing=*/true}; }

StartupVariable TcmallocReleaseRate() { return {"TCMALLOC_RELEASE_RATE", "0", /*keep_existing=*/true}; }

StartupVariable OpenCvPixelCap(long long max_pixels) {
  return {"OPENCV_IO_MAX_IMAGE_PIXELS", std::to_string(max_pixels), /*keep_existing=*/false};
}

void TurnOffAbseilDeadlockDetection() {
#if !defined(__SANITIZE_THREAD__) && !defined(__SANITIZE_ADDRESS__)
  const char* keep = getenv("CARE_ABSL_DEADLOCK_DETECTION");
  if (keep != nullptr && std::string(keep) == "1") return;
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#endif
}

}  // namespace careserve
