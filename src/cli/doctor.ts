export async function doctor(_argv: string[]): Promise<number> {
  return 2;
}
