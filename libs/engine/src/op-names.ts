/**
 * The primitive ONNX ops the engine emits (ops.ts), by ONNX op type. vjp.ts keys its rule table by this union, so
 * an op added here without a rule (or an explicit "not differentiable") fails to compile. A leaf module: ops.ts,
 * graph.ts and vjp.ts all import it, and it imports nothing.
 */
export type OpName =
  // elementwise
  | 'Add'
  | 'Sub'
  | 'Mul'
  | 'Div'
  | 'Max'
  | 'Neg'
  | 'Sqrt'
  | 'Reciprocal'
  | 'Exp'
  | 'Log'
  | 'Sigmoid'
  | 'Tanh'
  | 'Identity'
  | 'Pow'
  | 'Cast'
  | 'Equal'
  | 'Less'
  | 'GreaterOrEqual'
  | 'Where'
  | 'Sum'
  // linear algebra
  | 'MatMul'
  | 'Gemm'
  // layout
  | 'Transpose'
  | 'Reshape'
  | 'Unsqueeze'
  | 'Squeeze'
  | 'Expand'
  | 'Concat'
  | 'Split'
  | 'Slice'
  | 'Pad'
  // reductions and normalisations
  | 'ReduceSum'
  | 'ReduceMean'
  | 'ReduceMax'
  | 'Softmax'
  | 'LogSoftmax'
  // indexing
  | 'Gather'
  | 'GatherElements'
  | 'ConstantOfShape'
  | 'ScatterND'
  | 'ScatterElements';
