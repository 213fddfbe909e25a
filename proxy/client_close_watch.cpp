#include "client_close_watch.hpp"

#include "worker.hpp"

namespace bg {

void ClientCloseWatch::start() {
    handle_.watch_close = true;
    handle_.client_gone = false;
    worker_.arm_in_flight_sweep();
}

}  // namespace bg
