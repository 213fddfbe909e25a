#pragma once
// Who may run a control verb: the control socket maps each caller to one ([control.access]).

#include <cstdint>

namespace bg {

enum class Role : std::uint8_t { none = 0, read = 1, operate = 2, admin = 3 };

}  // namespace bg
