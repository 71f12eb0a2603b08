/** httpntlm ships no types; the bench uses only `get`. */
declare module 'httpntlm' {
  interface Options {
    url: string;
    username: string;
    password: string;
    domain: string;
    workstation: string;
    agent?: import('node:https').Agent;
  }
  const httpntlm: {
    get(options: Options, callback: (err: Error | null, res: { statusCode: number }) => void): void;
  };
  export default httpntlm;
}
