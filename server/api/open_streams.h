// HTTP/2 streams open on this process's gRPC server sockets, from gRPC's channelz: a call
// counts from its first frame, before its request message has arrived and before any
// handler of ours sees it. The drain waits for these as well as for the calls it sees.
#pragma once

namespace careserve {

// Streams started and not yet finished on every server socket; 0 when channelz is off.
int OpenServerStreams();

}  // namespace careserve
