#pragma once

namespace careserve {

// How long GNU OpenMP's idle team threads spin before they sleep, for processes that run
// LibTorch: GOMP_SPINCOUNT=20000 unless the environment already sets it. libgomp reads
// its environment when it is loaded, before main, so this re-executes the program
// (/proc/self/exe, same pid and arguments) with the variable set; call it first thing in
// main. If exec fails, the program goes on with libgomp's default (300000).
//
// Why: a team thread that spins through the caller's serial stretches takes the core's
// execution resources from it (here the two vCPUs behave like hyperthreads of one core).
// CARE-S0 224 batch 1 on one runner x 2 threads, care-engine-bench: p50 22.4-24.0 ms with
// spin counts 300000 (the default) and 1000000, 19.4-19.9 ms with 2000, 20000 and 100000;
// batch 8 unchanged (83-89 ms). See docs/service.md.
void SetOpenMpSpinCount(char** argv);

}  // namespace careserve
