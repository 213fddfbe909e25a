#pragma once
// ExchangePool: one worker's spare ExchangeStates (see exchange_state.hpp), at most `spare`
// of them kept warm; the rest are freed, and the memory of a burst's given back to the system
// (HeapTrim). Worker thread only.

#include <cstddef>
#include <memory>
#include <vector>

namespace bg {

struct ExchangeState;
struct Limits;
class HeapTrim;

class ExchangePool {
  public:
    explicit ExchangePool(HeapTrim& trim);
    ~ExchangePool();
    ExchangePool(const ExchangePool&) = delete;
    ExchangePool& operator=(const ExchangePool&) = delete;

    std::unique_ptr<ExchangeState> take();
    // Kept while fewer than limits.spare_exchanges are; else freed (and heap_trim_after counts it).
    void give(std::unique_ptr<ExchangeState> state, const Limits& limits);
    std::size_t spare_count() const { return spare_.size(); }

  private:
    HeapTrim& trim_;
    std::vector<std::unique_ptr<ExchangeState>> spare_;
};

}  // namespace bg
