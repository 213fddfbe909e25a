#pragma once
// ExchangePool: one worker's spare ExchangeStates (see exchange_state.hpp), at most `spare`
// of them kept warm; the rest are freed. Worker thread only.

#include <cstddef>
#include <memory>
#include <vector>

namespace bg {

struct ExchangeState;

class ExchangePool {
  public:
    ExchangePool();
    ~ExchangePool();
    ExchangePool(const ExchangePool&) = delete;
    ExchangePool& operator=(const ExchangePool&) = delete;

    std::unique_ptr<ExchangeState> take();
    void give(std::unique_ptr<ExchangeState> state, std::size_t spare);
    std::size_t spare_count() const { return spare_.size(); }

  private:
    std::vector<std::unique_ptr<ExchangeState>> spare_;
};

}  // namespace bg
