#include "server/common/openmp_env.h"

#include <stdlib.h>
#include <unistd.h>

namespace careserve {

void SetOpenMpSpinCount(char** argv) {
  if (getenv("GOMP_SPINCOUNT") != nullptr) return;  // the user's value, or already re-executed
  setenv("GOMP_SPINCOUNT", "2000", /*overwrite=*/1);
  execv("/proc/self/exe", argv);
}

}  // namespace careserve
