// resgen::run's kernels in C++: the op's warm path without Python (resgen/runtime/native.py builds
// and loads this file; resgen/runtime/ops.py defines the ops it serves).
//
// Through the dispatcher, the op's Python kernels cost ~20 us a call: the arguments converted to
// Python objects and back at each Python kernel, and the Python warm path itself. Here:
//
//  - Autograd: a call that records gradients goes to `resgen::_grad` (Python: an autograd.Function
//    whose backward is the generated backward kernel); any other continues below autograd.
//  - CPU, CUDA: a call whose block, kernel, training flag and tensor layouts (sizes, strides,
//    dtypes, devices) were seen before fills the launch template Python installed with
//    `resgen::_remember`: outputs allocated, overwritten inputs copied (the op is functional),
//    pointers and scalars written into the kernel's arguments, the entry point chosen by the
//    pointers' alignment, one launch (two with a column reduction's finalize). Any other call goes
//    to `resgen::_slow`, the Python kernel, which runs it and installs its template.
//
// A template is what resgen.runtime.launch.LaunchTemplate.fill does for the same layout; the op's
// outputs are always fresh (or copies), so no call can alias them and no overlap check is needed.

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <dlfcn.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

using Outputs = std::vector<at::Tensor>;
using Signature = Outputs(c10::string_view, c10::string_view, at::TensorList, at::ArrayRef<double>, int64_t,
                          int64_t, bool);

// How each ABI argument gets its value (resgen/runtime/native.py writes these codes).
enum Source : int64_t { POINTER = 0, CONSTANT = 1, SEED = 2, OFFSET = 3, SCALAR = 4 };
enum Backend : int64_t { EMU = 0, CUDA = 1 };
constexpr size_t kMaxArguments = 64;

struct Argument {
  int64_t source;
  int64_t value;  // POINTER: a value's index; CONSTANT: the 64 bits; SCALAR: the scalar's index
};

struct Kernel {  // one launch
  int64_t grid, threads, smem;
  std::vector<Argument> arguments;
};

struct Template {
  int64_t backend;
  int64_t set_sanitizing;  // emu: the runtime's rg_emu_set_sanitizing (one runtime serves every kernel)
  int64_t context;         // cuda: the device's primary context
  std::vector<int64_t> copies;  // inputs an output overwrites: the op writes into a copy
  std::vector<std::pair<std::vector<int64_t>, at::ScalarType>> allocations;  // appended to the values
  std::vector<int64_t> outputs, rows, weights;  // indices into the values
  int64_t align;
  bool strides_aligned, peel_strides;
  int64_t wide, peel, narrow;  // entry points (peel 0: none)
  Kernel main;
  int64_t finalize;  // the finalize entry point, 0: none
  Kernel finalize_launch;
};

// ---- the table Python fills --------------------------------------------------------------------

std::string layout_key(c10::string_view block, c10::string_view kernel, bool training, at::TensorList tensors) {
  std::string key;
  key.reserve(block.size() + kernel.size() + 2 + tensors.size() * 64);
  key.append(block.data(), block.size());
  key.push_back('\0');
  key.append(kernel.data(), kernel.size());
  key.push_back(training ? '1' : '0');
  auto put = [&key](int64_t v) { key.append(reinterpret_cast<const char*>(&v), sizeof v); };
  for (const at::Tensor& t : tensors) {
    put(t.dim());
    for (int64_t s : t.sizes()) put(s);
    for (int64_t s : t.strides()) put(s);
    put(static_cast<int64_t>(t.scalar_type()));
    put(static_cast<int64_t>(t.device().type()) << 16 | (t.device().index() & 0xFFFF));
  }
  return key;
}

constexpr size_t kMaxTemplates = 4096;
std::shared_mutex table_mutex;
std::unordered_map<std::string, std::shared_ptr<const Template>> table;

std::atomic<int64_t> hits{0}, misses{0};

std::shared_ptr<const Template> find(const std::string& key) {
  std::shared_lock<std::shared_mutex> lock(table_mutex);
  auto it = table.find(key);
  (it == table.end() ? misses : hits).fetch_add(1, std::memory_order_relaxed);
  return it == table.end() ? nullptr : it->second;
}

std::vector<int64_t> counts() {  // resgen::_native_counts: templates kept, calls that found one, calls that did not
  std::shared_lock<std::shared_mutex> lock(table_mutex);
  return {static_cast<int64_t>(table.size()), hits.load(), misses.load()};
}

struct Reader {  // the int list `_remember` receives
  at::ArrayRef<int64_t> data;
  size_t at = 0;
  int64_t next() {
    TORCH_CHECK(at < data.size(), "resgen::_remember: the template ends early");
    return data[at++];
  }
  size_t count(size_t each) {  // a list's length, checked against what is left
    const int64_t n = next();
    TORCH_CHECK(n >= 0 && static_cast<size_t>(n) * each <= data.size() - at, "resgen::_remember: a list of ", n,
                " runs past the template's end");
    return static_cast<size_t>(n);
  }
  std::vector<int64_t> list() {
    std::vector<int64_t> out(count(1));
    for (auto& v : out) v = next();
    return out;
  }
  Kernel kernel() {
    Kernel k{next(), next(), next(), {}};
    k.arguments.resize(count(2));
    TORCH_CHECK(k.arguments.size() <= kMaxArguments, "resgen::_remember: too many kernel arguments");
    for (auto& a : k.arguments) a = Argument{next(), next()};
    return k;
  }
};

// Layout: backend, set_sanitizing, context, copies, allocation sizes (one list each; their dtypes are
// `dtypes`' dtypes), outputs, rows, weights, align, strides_aligned, peel_strides, wide, peel, narrow,
// main kernel, finalize entry, [finalize kernel].
void remember(c10::string_view block, c10::string_view kernel, bool training, at::TensorList tensors,
              at::TensorList dtypes, at::IntArrayRef data) {
  Reader r{data};
  auto t = std::make_shared<Template>();
  t->backend = r.next();
  t->set_sanitizing = r.next();
  t->context = r.next();
  t->copies = r.list();
  for (const at::Tensor& d : dtypes) t->allocations.emplace_back(r.list(), d.scalar_type());
  t->outputs = r.list();
  t->rows = r.list();
  t->weights = r.list();
  t->align = r.next();
  t->strides_aligned = r.next() != 0;
  t->peel_strides = r.next() != 0;
  t->wide = r.next();
  t->peel = r.next();
  t->narrow = r.next();
  t->main = r.kernel();
  t->finalize = r.next();
  if (t->finalize) t->finalize_launch = r.kernel();
  TORCH_CHECK(r.at == data.size(), "resgen::_remember: ", data.size() - r.at, " values left over");
  const auto values = static_cast<int64_t>(tensors.size() + t->allocations.size());
  auto check = [values](int64_t i) { TORCH_CHECK(0 <= i && i < values, "resgen::_remember: no value ", i); };
  for (auto* list : {&t->copies, &t->outputs, &t->rows, &t->weights})
    for (int64_t i : *list) check(i);
  for (const Kernel* k : {&t->main, &t->finalize_launch})
    for (const Argument& a : k->arguments) {
      TORCH_CHECK(POINTER <= a.source && a.source <= SCALAR, "resgen::_remember: no argument source ", a.source);
      if (a.source == POINTER) check(a.value);
    }
  TORCH_CHECK(tensors.size() > 0 && (t->backend == EMU || t->backend == CUDA) && t->wide && t->narrow && t->align > 0,
              "resgen::_remember: an incomplete template");
  std::unique_lock<std::shared_mutex> lock(table_mutex);
  if (table.size() < kMaxTemplates) table.emplace(layout_key(block, kernel, training, tensors), std::move(t));
}

// ---- launching ---------------------------------------------------------------------------------

using EmuLaunch = int (*)(void**, long long, unsigned, unsigned long long, char*, unsigned long long);
using CuLaunchKernel = int (*)(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void*,
                               void**, void**);
using CuContext = int (*)(void**);
using CuSetContext = int (*)(void*);

struct Driver {  // the CUDA driver's entry points, from the libcuda the process has loaded
  CuLaunchKernel launch = nullptr;
  CuContext get_context = nullptr;
  CuSetContext set_context = nullptr;
  Driver() {
    void* lib = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD);
    if (lib == nullptr) lib = dlopen("libcuda.so.1", RTLD_LAZY);
    TORCH_CHECK(lib != nullptr, "resgen: libcuda.so.1 is not loadable: ", dlerror());
    launch = reinterpret_cast<CuLaunchKernel>(dlsym(lib, "cuLaunchKernel"));
    get_context = reinterpret_cast<CuContext>(dlsym(lib, "cuCtxGetCurrent"));
    set_context = reinterpret_cast<CuSetContext>(dlsym(lib, "cuCtxSetCurrent"));
    TORCH_CHECK(launch && get_context && set_context, "resgen: libcuda.so.1 lacks cuLaunchKernel");
  }
};

void run(const Template& t, const Kernel& k, int64_t entry, const Outputs& values, at::ArrayRef<double> scalars,
         int64_t seed, int64_t offset) {
  uint64_t slots[kMaxArguments];
  void* params[kMaxArguments];
  for (size_t i = 0; i < k.arguments.size(); ++i) {
    const Argument& a = k.arguments[i];
    slots[i] = 0;
    switch (a.source) {
      case POINTER: slots[i] = reinterpret_cast<uint64_t>(values[a.value].data_ptr()); break;
      case CONSTANT: slots[i] = static_cast<uint64_t>(a.value); break;
      case SEED: slots[i] = static_cast<uint64_t>(seed); break;
      case OFFSET: slots[i] = static_cast<uint64_t>(offset); break;
      case SCALAR: {
        TORCH_CHECK(static_cast<size_t>(a.value) < scalars.size(), "resgen::run: too few scalars");
        const auto value = static_cast<float>(scalars[a.value]);
        std::memcpy(&slots[i], &value, sizeof value);
        break;
      }
      default: TORCH_CHECK(false, "resgen::run: unknown argument source ", a.source);
    }
    params[i] = &slots[i];
  }
  if (t.backend == EMU) {
    reinterpret_cast<void (*)(int)>(t.set_sanitizing)(0);
    char error[512] = {0};
    const int status = reinterpret_cast<EmuLaunch>(entry)(params, k.grid, static_cast<unsigned>(k.threads),
                                                          static_cast<unsigned long long>(k.smem), error,
                                                          sizeof error);
    TORCH_CHECK(status == 0, "resgen: emu launch failed: ", error);
    return;
  }
  static const Driver driver;
  const c10::Device device = values[0].device();
  c10::DeviceGuard guard(device);  // the launch runs in the current context: the tensors' device's
  void* current = nullptr;
  if (driver.get_context(&current) == 0 && current == nullptr)  // a thread the runtime never set up
    driver.set_context(reinterpret_cast<void*>(t.context));
  void* stream = c10::impl::getDeviceGuardImpl(device.type())->getStream(device).native_handle();
  const int status = driver.launch(reinterpret_cast<void*>(entry), static_cast<unsigned>(k.grid), 1, 1,
                                   static_cast<unsigned>(k.threads), 1, 1, static_cast<unsigned>(k.smem), stream,
                                   params, nullptr);
  TORCH_CHECK(status == 0, "resgen: cuLaunchKernel failed with CUDA error ", status);
}

uint64_t any_bits(const Outputs& values, const std::vector<int64_t>& which) {
  uint64_t bits = 0;
  for (int64_t i : which) bits |= reinterpret_cast<uint64_t>(values[i].data_ptr());
  return bits;
}

Outputs launch(const Template& t, at::TensorList tensors, at::ArrayRef<double> scalars, int64_t seed,
               int64_t offset) {
  Outputs values(tensors.begin(), tensors.end());
  values.reserve(values.size() + t.allocations.size());
  for (int64_t i : t.copies) values[i] = values[i].clone();
  const auto options = at::TensorOptions().device(values[0].device());
  for (const auto& [sizes, dtype] : t.allocations) values.push_back(at::empty(sizes, options.dtype(dtype)));
  const auto align = static_cast<uint64_t>(t.align);
  const bool rows_aligned = any_bits(values, t.rows) % align == 0;
  int64_t entry = t.narrow;
  if (t.strides_aligned && rows_aligned && any_bits(values, t.weights) % align == 0)
    entry = t.wide;
  else if (t.peel != 0 && t.peel_strides && rows_aligned)
    entry = t.peel;
  run(t, t.main, entry, values, scalars, seed, offset);
  if (t.finalize) run(t, t.finalize_launch, t.finalize, values, scalars, seed, offset);
  Outputs out;
  out.reserve(t.outputs.size());
  for (int64_t i : t.outputs) out.push_back(values[i]);
  return out;
}

// ---- the op's kernels --------------------------------------------------------------------------

c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

Outputs backend_kernel(c10::string_view block, c10::string_view kernel, at::TensorList tensors,
                       at::ArrayRef<double> scalars, int64_t seed, int64_t offset, bool training) {
  if (!tensors.empty()) {
    if (auto t = find(layout_key(block, kernel, training, tensors))) return launch(*t, tensors, scalars, seed, offset);
  }
  static const auto slow = op("resgen::_slow");
  at::AutoDispatchBelowAutograd below;
  return slow.call(block, kernel, tensors, scalars, seed, offset, training);
}

Outputs autograd_kernel(c10::string_view block, c10::string_view kernel, at::TensorList tensors,
                        at::ArrayRef<double> scalars, int64_t seed, int64_t offset, bool training) {
  if (c10::GradMode::is_enabled()) {
    for (const at::Tensor& t : tensors) {
      if (t.requires_grad()) {
        static const auto grad = op("resgen::_grad");
        return grad.call(block, kernel, tensors, scalars, seed, offset, training);
      }
    }
  }
  static const auto run = op("resgen::run");
  at::AutoDispatchBelowAutograd below;
  return run.call(block, kernel, tensors, scalars, seed, offset, training);
}

}  // namespace

TORCH_LIBRARY_IMPL(resgen, Autograd, m) { m.impl("run", TORCH_FN(autograd_kernel)); }
TORCH_LIBRARY_IMPL(resgen, CPU, m) { m.impl("run", TORCH_FN(backend_kernel)); }
TORCH_LIBRARY_IMPL(resgen, CUDA, m) { m.impl("run", TORCH_FN(backend_kernel)); }
TORCH_LIBRARY_IMPL(resgen, CompositeImplicitAutograd, m) { m.impl("_remember", TORCH_FN(remember)); }
TORCH_LIBRARY_IMPL(resgen, CompositeExplicitAutograd, m) { m.impl("_native_counts", TORCH_FN(counts)); }
