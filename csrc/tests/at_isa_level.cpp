// Runs a test program at one ISA level of the CPU kernel:
//   at_isa_level LEVEL PROGRAM [ARGS...]  =  COMHE_CPU_ISA=LEVEL PROGRAM [ARGS...],
// or exits with ctest's skip code (77) where this CPU cannot run LEVEL: the
// program, compiled for that level, would die of an illegal instruction
// before it could say so. This launcher is compiled without a level's -march.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "comhe/cpu_isa.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s LEVEL PROGRAM [ARGS...]\n", argv[0]);
    return 2;
  }
  const comhe::cpu::IsaReport r = comhe::cpu::isa_report();
  bool runnable = false;
  for (const std::string& l : r.runnable) runnable = runnable || l == argv[1];
  if (!runnable) {
    std::printf("skipped: this CPU cannot run the ISA level %s (it runs:", argv[1]);
    for (const std::string& l : r.runnable) std::printf(" %s", l.c_str());
    std::printf(")\n");
    return 77;
  }
  setenv("COMHE_CPU_ISA", argv[1], 1);
  execv(argv[2], argv + 2);
  std::perror(argv[2]);
  return 1;
}
