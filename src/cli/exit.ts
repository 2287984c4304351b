// The exit code a command asks for (main() returns it): e.g. 1 after inspect lists problems,
// 130 after Ctrl-C stopped an answer.
let code = 0;

export function setExitCode(c: number): void {
  code = c;
}
export function takeExitCode(): number {
  const c = code;
  code = 0;
  return c;
}
