// Process memory allocator settings for serving.
#pragma once

namespace careserve {

// Makes glibc malloc keep freed memory for reuse instead of handing it back to the kernel.
//
// Every batch allocates and frees the network's activations (megabytes per tensor). With
// glibc's defaults, freed memory at the top of a heap is trimmed and large blocks are
// unmapped, so the next batch takes a page fault (and a zeroed page) for every 4 KiB
// again. Measured (care-engine-bench, CARE-S0 224, batch 16, two runners on 2 cores):
// 72 img/s and 1.26M page faults with the defaults, 84 img/s and 0.44M with this.
// Blocks up to 32 MiB (glibc's largest mmap threshold) come from the heap, and the heap
// is not trimmed: the resident size stays at its peak, which a server reaches after a
// few batches anyway.
void KeepFreedMemory();

}  // namespace careserve
